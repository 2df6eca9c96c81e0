# One image for every Troupe process: worker (default), beat, flower, run-team, db upgrade.
# It holds what users install, the wheel, and nothing of the checkout: the first stage
# builds it, the second installs it.
FROM python:3.11-slim AS wheel

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
# orchestration/migrations is a link to migrations/: both are copied.
COPY migrations ./migrations
COPY orchestration ./orchestration
COPY workers ./workers
COPY workflows ./workflows
COPY examples ./examples
RUN pip wheel --no-deps --wheel-dir /dist .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /dist /dist
RUN pip install /dist/*.whl && rm -rf /dist && useradd --create-home troupe
# Not root; beat keeps its schedule under the state directory, ./.troupe in this home.
USER troupe
WORKDIR /home/troupe

ENTRYPOINT ["troupe"]
CMD ["worker", "--concurrency", "2"]
