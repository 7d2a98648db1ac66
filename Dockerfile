# Tandem: slim Python base, CPU-only torch, non-root user; migrates, then serves.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TANDEM_DATABASE_URL=sqlite:////data/tandem.db
WORKDIR /srv/tandem

# CPU build of torch first, from PyTorch's CPU index, so the CUDA build is never pulled in.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md alembic.ini ./
COPY twin ./twin
COPY app ./app
COPY migrations ./migrations
RUN pip install . && useradd --create-home --uid 10001 tandem && mkdir /data && chown tandem /data

USER tandem
VOLUME /data
EXPOSE 8000
CMD ["sh", "-c", "tandem migrate && exec tandem serve --host 0.0.0.0 --port 8000"]
