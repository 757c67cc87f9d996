# The one image for the operator and its workers (`imagesync operator` / `imagesync worker`).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install ".[operator]"

FROM python:3.11-slim
COPY --from=build /install /usr/local
# Workers and the operator run as an unprivileged user with a read-only root filesystem.
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin imagesync
USER 65532:65532
ENTRYPOINT ["imagesync"]
CMD ["--help"]
