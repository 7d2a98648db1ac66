"""HTTP routes: parse, call a service function, shape the response."""
