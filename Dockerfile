# CPU image of FlatMTL; the multi-stage service image (serve/worker, CUDA build argument) lands with
# the observability and deployment issue.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints-cpu.txt README.md ./
COPY api ./api
COPY service ./service
COPY workers ./workers
RUN pip install --no-cache-dir -c constraints-cpu.txt . && useradd --create-home flatmtl
USER flatmtl
ENTRYPOINT ["flatmtl"]
CMD ["methods"]
