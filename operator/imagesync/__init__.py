"""imagesync: copy and keep in sync container images between OCI / Docker Registry V2 registries."""

__version__ = "0.1.0"
