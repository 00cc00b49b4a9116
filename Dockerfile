# The project's image: the ledger CLI, the dispatcher, the views and `ledger serve`.
FROM python:3.11-slim
# psql, for the compose file's one-shot setup service (`ledger roles | psql`).
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ledger ./ledger
COPY projections ./projections
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["ledger"]
CMD ["--help"]
