"""The twin spec's `model` and `learner` as JSON Schema, generated from what `twin/` declares.

Each model kind describes itself (`TwinModel.describe`: channel roles, named parameters with
units, structural options with ranges and defaults) and each learner method has its table of
options (`Learner.OPTIONS`); this module turns them into OpenAPI components, so the schema can
never disagree with the code that checks a spec. `model` is a union discriminated by `kind`;
`learner` is a union discriminated by `method`, or a learner without a method (the model
kind's default method, with that method's options).

The components document; they do not validate: `twin.spec.TwinSpec.from_dict` stays the one
check of a spec, with its own messages (`model.params.R: must be positive`).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

REF = "#/components/schemas/"
MODEL, LEARNER, METHOD, DEFAULT_LEARNER, SPEC = (
    "Model",
    "Learner",
    "LearnerMethod",
    "DefaultLearner",
    "TwinSpec",
)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"{REF}{name}"}


def placeholder(name: str) -> dict[str, str]:
    """A reference to component `name` that pydantic leaves alone (it resolves `$ref`s it
    made itself); `resolve_placeholders` turns it into a `$ref`."""
    return {"x-component": name}


def resolve_placeholders(node: Any) -> Any:
    if isinstance(node, dict):
        if "x-component" in node:  # pydantic adds a title beside it
            return ref(node["x-component"])
        return {k: resolve_placeholders(v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_placeholders(v) for v in node]
    return node


def camel(name: str) -> str:
    """ "mass_spring_damper" -> "MassSpringDamper" (component names)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


# -- numbers with ranges ------------------------------------------------------------------------
def number(kind: str, low: float, high: float, open_low: bool) -> dict[str, Any]:
    """{"type": "integer"|"number"} with its finite limits."""
    schema: dict[str, Any] = {"type": "integer" if kind == "int" else "number"}
    if math.isfinite(low):
        schema["exclusiveMinimum" if open_low else "minimum"] = _plain(low)
    if math.isfinite(high):
        schema["maximum"] = _plain(high)
    return schema


def _plain(x: float) -> int | float:
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(x)


# -- model kinds --------------------------------------------------------------------------------
def kind_schema(info) -> dict[str, Any]:
    """One model kind (a `twin.models.base.KindInfo`) as an object schema."""
    properties: dict[str, Any] = {"kind": {"type": "string", "const": info.kind}}
    properties["params"] = nullable(_params(info))
    properties["bounds"] = nullable(_bounds(info))
    for name, option in (info.options or {}).items():
        option_schema = number(option.type, option.low, option.high, option.open_low)
        option_schema["default"] = _plain(option.default)
        unit = f" ({option.unit})" if option.unit else ""
        option_schema["description"] = f"{option.description}{unit}".strip()
        properties[name] = option_schema
    description = info.summary
    if info.inputs is not None:
        description += (
            f"\n\nChannels, in this order: inputs [{', '.join(info.inputs)}], "
            f"outputs [{', '.join(info.outputs or ())}]."
        )
    description += f" Default learner: `{info.default_learner}`"
    beyond = info.default_learner_beyond
    if beyond is not None:
        description += f" (`{beyond[1]}` for models of more than {beyond[0]} parameters)"
    out = {
        "title": f"{info.kind} model",
        "description": description + ".",
        "type": "object",
        "required": ["kind"],
        "properties": properties,
        "additionalProperties": info.options is None,
        "x-default-learner": info.default_learner,
    }
    if beyond is not None:  # the default for the larger models
        out["x-default-learner-beyond"] = {"parameters": beyond[0], "method": beyond[1]}
    return out


def _params(info) -> dict[str, Any]:
    if info.params is None:
        schema: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "number"}}
        if info.param_names:
            schema["propertyNames"] = {"pattern": info.param_names}
        schema["description"] = (
            "Initial coefficients by name: A<i>[out,out], B<j>[out,in], c[out], in the "
            "channels' units; the others start at zero."
            if info.kind == "arx"
            else "Initial values by name."
        )
        return schema
    properties = {}
    for p in info.params:
        value = {"type": "number", "description": f"{p.description} ({p.unit})"}
        if p.positive:
            value["exclusiveMinimum"] = 0
        properties[p.name] = value
    description = (
        "Initial values in physical units; a parameter left out is set from the first "
        "observations (the first guess)."
        if properties
        else f"{info.kind} takes no initial parameters."
    )
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": False,
    }


def _bounds(info) -> dict[str, Any]:
    if not info.bounds:
        return {
            "type": "object",
            "maxProperties": 0,
            "description": f"{info.kind} takes no bounds (they apply to physical kinds).",
        }
    pair: dict[str, Any] = {
        "type": "array",
        "prefixItems": [{"type": "number"}, {"type": "number"}],
        "minItems": 2,
        "maxItems": 2,
    }
    schema: dict[str, Any] = {
        "type": "object",
        "description": "[low, high] per parameter, low < high: calibration never leaves them.",
    }
    if info.params is None:
        schema["additionalProperties"] = pair
        return schema
    properties = {}
    for p in info.params:
        bound = dict(pair)
        if p.positive:
            bound["prefixItems"] = [{"type": "number", "exclusiveMinimum": 0}, {"type": "number"}]
        properties[p.name] = {**bound, "description": f"{p.description} ({p.unit})"}
    schema["properties"] = properties
    schema["additionalProperties"] = False
    return schema


# -- learners -----------------------------------------------------------------------------------
def option_choices(option) -> list[dict[str, Any]]:
    """The schemas one learner option (a `twin.learners.options.Option`) accepts."""
    if option.kind == "choice":
        choices: list[dict[str, Any]] = [{"type": "string", "enum": list(option.choices)}]
    else:
        choices = [number(option.kind, option.low, option.high, option.open_low)]
    if option.words:
        choices.append({"type": "string", "enum": list(option.words)})
    if option.default is None:
        choices.append({"type": "null"})
    return choices


def option_default(option) -> Any:
    return option.default if isinstance(option.default, str | None) else _plain(option.default)


DERIVED = "null or left out: derived from the other options and the model."


def option_schema(option) -> dict[str, Any]:
    """One learner option with its default."""
    choices = option_choices(option)
    out = choices[0] if len(choices) == 1 else {"anyOf": choices}
    if option.default is None:
        out["description"] = DERIVED
    return {**out, "default": option_default(option)}


def _seed() -> dict[str, Any]:
    from twin.spec import MAX_SEED

    return {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_SEED,
        "default": 0,
        "description": "Makes calibration repeatable.",
    }


def method_schema(method: str, learner_cls) -> dict[str, Any]:
    properties = {"method": {"type": "string", "const": method}, "seed": _seed()}
    properties |= {name: option_schema(o) for name, o in learner_cls.OPTIONS.items()}
    from twin.models.base import summary

    return {
        "title": f"{method} learner",
        "description": summary(learner_cls),
        "type": "object",
        "required": ["method"],
        "properties": properties,
        "additionalProperties": False,
    }


def default_learner_schema(kinds: list, learners: dict) -> dict[str, Any]:
    """A learner without a method: the model kind's default, with that method's options (the
    union of the default methods' options; the spec check applies the right method's)."""
    defaults = {info.kind: info.default_learner for info in kinds}
    beyond = {i.kind: i.default_learner_beyond for i in kinds if i.default_learner_beyond}
    properties: dict[str, Any] = {"method": {"type": "null"}, "seed": _seed()}
    choices: dict[str, list[dict[str, Any]]] = {}
    option_defaults: dict[str, dict[str, Any]] = {}
    methods = set(defaults.values()) | {method for _, method in beyond.values()}
    for method in sorted(methods & set(learners)):
        for name, option in learners[method].OPTIONS.items():
            known = choices.setdefault(name, [])
            known += [c for c in option_choices(option) if c not in known]
            option_defaults.setdefault(name, {})[method] = option_default(option)
    for name, accepted in choices.items():
        schema: dict[str, Any] = accepted[0] if len(accepted) == 1 else {"anyOf": accepted}
        by_default = option_defaults[name]
        if len(set(map(repr, by_default.values()))) == 1:
            schema["default"] = next(iter(by_default.values()))
            if schema["default"] is None:
                schema["description"] = DERIVED
        else:
            schema["description"] = "Default: " + "; ".join(
                f"{'derived from the other options' if value is None else repr(value)} with "
                f"{method}"
                for method, value in by_default.items()
            )
        properties[name] = schema
    by_method: dict[str, list[str]] = {}
    for kind, method in defaults.items():
        limit = f" up to {beyond[kind][0]} parameters" if kind in beyond else ""
        by_method.setdefault(method, []).append(kind + limit)
    for kind, (limit, method) in beyond.items():
        by_method.setdefault(method, []).append(f"{kind} beyond {limit} parameters")
    which = "; ".join(f"`{m}` for {', '.join(ks)}" for m, ks in sorted(by_method.items()))
    return {
        "title": "default learner",
        "description": f"No method (left out or null): the model kind's default ({which}), "
        "with that method's options.",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }


# -- the components -------------------------------------------------------------------------------
@cache
def spec_components() -> dict[str, dict[str, Any]]:
    """Every component of the spec's schema by name: a schema per model kind and learner
    method, the unions `Model` and `Learner`, and `TwinSpec` (channels, model, learner)."""
    from twin.learners import LEARNERS
    from twin.models import model_class, model_kinds
    from twin.spec import CHANNEL_NAME

    kinds = [model_class(kind).describe() for kind in model_kinds()]
    out: dict[str, dict[str, Any]] = {}
    mapping = {}
    for info in kinds:
        name = f"{camel(info.kind)}Model"
        out[name] = kind_schema(info)
        mapping[info.kind] = f"{REF}{name}"
    out[MODEL] = {
        "description": "The twin's parametric model, by `kind`.",
        "oneOf": [{"$ref": target} for target in mapping.values()],
        "discriminator": {"propertyName": "kind", "mapping": mapping},
    }
    methods = {}
    for method, learner_cls in LEARNERS.items():
        name = f"{camel(method)}Learner"
        out[name] = method_schema(method, learner_cls)
        methods[method] = f"{REF}{name}"
    out[METHOD] = {
        "description": "A learner chosen by `method`.",
        "oneOf": [{"$ref": target} for target in methods.values()],
        "discriminator": {"propertyName": "method", "mapping": methods},
    }
    out[DEFAULT_LEARNER] = default_learner_schema(kinds, LEARNERS)
    out[LEARNER] = {
        "description": "What recalibrates the parameters: a `method` with its options, or "
        "none for the model kind's default.",
        "oneOf": [ref(METHOD), ref(DEFAULT_LEARNER)],
    }
    channels = {
        "type": "array",
        "items": {"type": "string", "pattern": CHANNEL_NAME.pattern},
        "uniqueItems": True,
    }
    out[SPEC] = {
        "description": "A twin's channels, model and learner, as stored (options the spec "
        "left out are not filled in; a learner without a method has `method: null`).",
        "type": "object",
        "required": ["inputs", "outputs", "model", "learner"],
        "properties": {
            "inputs": channels,
            "outputs": {**channels, "minItems": 1},
            "model": ref(MODEL),
            "learner": ref(LEARNER),
        },
    }
    return out
