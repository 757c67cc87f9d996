# The one image for the operator and its workers (`imagesync operator` / `imagesync worker`).
# BASE: any image with python3 (>= 3.11) and its venv module; tests/image/build.sh passes a Debian base made
# with mmdebstrap when no registry is reachable.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
WORKDIR /src
# A venv, not `pip install --prefix`: the prefix layout differs between bases (Debian's python puts it under
# local/.../dist-packages), a venv's does not.
RUN python3 -m venv /opt/imagesync
ENV PATH=/opt/imagesync/bin:$PATH
# Dependencies first, in a layer of their own that a source change does not invalidate. setuptools is the
# build backend, pinned here too, so the project itself builds offline (--no-build-isolation).
# Bytecode is compiled at build time (here and below) because the final image's root is read-only.
# Hash-based .pyc files stay valid whatever mtimes COPY gives the sources; "unchecked" skips hashing at
# import (the image never changes).
COPY pyproject.toml constraints.txt ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['operator']))" > deps.txt \
 && pip install --no-cache-dir --no-compile -c constraints.txt -r deps.txt setuptools \
 && python3 -m compileall -q -f --invalidation-mode unchecked-hash /opt/imagesync/lib
COPY README.md ./
COPY operator ./operator
# pip and setuptools are not needed at run time (23 MB); nothing can be installed on a read-only root anyway.
RUN pip install --no-cache-dir --no-compile --no-deps --no-build-isolation -c constraints.txt . \
 && pip check \
 && python3 -m compileall -q -f --invalidation-mode unchecked-hash \
      /opt/imagesync/lib/python3*/site-packages/imagesync \
 && pip uninstall -q -y pip setuptools

FROM ${BASE}
# A passwd/group entry for 65532 (home and shell unusable) so tools looking up the user find one.
RUN groupadd --gid 65532 imagesync \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin imagesync
COPY --from=build /opt/imagesync /opt/imagesync
# Workers and the operator run unprivileged with a read-only root filesystem: never write .pyc files.
ENV PATH=/opt/imagesync/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
USER 65532:65532
ENTRYPOINT ["imagesync"]
CMD ["--help"]
