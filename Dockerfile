# The Highwater image: one Python environment, the `highwater` CLI as entry point.
# docker-compose.yml runs it three times (topics, run, serve); brokers and stores are separate services,
# so nothing but the Python environment lives here.
FROM python:3.11-slim

# uv comes from PyPI at the version the project is developed with (tests/test_compose.py keeps them equal).
RUN pip install --no-cache-dir uv==0.13.9

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PYTHONUNBUFFERED=1

WORKDIR /app

# Dependencies first, from the lock file alone: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

# Then the project itself.
COPY . .
RUN uv sync --frozen --no-dev

RUN groupadd --system --gid 10001 highwater \
    && useradd --system --uid 10001 --gid highwater --home-dir /app --shell /usr/sbin/nologin highwater \
    && mkdir -p /var/lib/highwater \
    && chown highwater:highwater /var/lib/highwater

ENV PATH="/app/.venv/bin:${PATH}" \
    HIGHWATER_STATE_DIR=/var/lib/highwater

USER highwater
EXPOSE 50051

ENTRYPOINT ["highwater"]
CMD ["--help"]
