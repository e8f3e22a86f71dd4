FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY dashboards ./dashboards
COPY alerts ./alerts
RUN pip install --no-cache-dir . && useradd --system connhealth
USER connhealth
EXPOSE 9115
ENTRYPOINT ["connhealth"]
CMD ["serve", "--demo", "--web.listen-address", ":9115"]
