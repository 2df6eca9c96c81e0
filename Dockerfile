# One image for every Troupe process: worker (default), beat, flower, run-team, db upgrade.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY orchestration ./orchestration
COPY workers ./workers
COPY workflows ./workflows
COPY migrations ./migrations
COPY examples ./examples
COPY celeryconfig.py manage.py ./
RUN pip install . && useradd --create-home troupe && chown -R troupe /app
USER troupe

ENTRYPOINT ["python", "manage.py"]
CMD ["worker", "--concurrency", "2"]
