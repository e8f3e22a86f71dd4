FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY exporter ./exporter
COPY dashboards ./dashboards
COPY alerts ./alerts
COPY examples ./examples
RUN pip install --no-cache-dir . && useradd --system connhealth && rm -rf /src
WORKDIR /
USER connhealth
EXPOSE 9115
# The slim image has no curl: ask /-/healthy with the interpreter that is there anyway.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9115/-/healthy', timeout=4).status != 200)"]
ENTRYPOINT ["connhealth"]
CMD ["serve", "--demo", "--web.listen-address", ":9115"]
