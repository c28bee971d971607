# The rankshard image: the `rankshard` CLI (its entrypoint) and the router (`python -m rankshard.router`, as
# compose.sharded.yml runs it). The package is installed as the Makefile installs it (a venv, pip upgraded,
# then the project), minus the editable mode and the dev extras; tests/test_compose.py keeps the two equal.
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
WORKDIR /src
RUN python -m venv /opt/rankshard \
    && /opt/rankshard/bin/pip install --quiet --upgrade pip \
    && /opt/rankshard/bin/pip install --quiet .

# Only the venv goes on: no sources, no build cache.
FROM python:3.12-slim
COPY --from=build /opt/rankshard /opt/rankshard
ENV PATH=/opt/rankshard/bin:$PATH PYTHONUNBUFFERED=1
# A fixed uid: router replicas sharing one port (SO_REUSEPORT) must run as the same user.
RUN groupadd --system --gid 10001 rankshard \
    && useradd --system --uid 10001 --gid rankshard --no-create-home --home-dir /nonexistent rankshard
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051
ENTRYPOINT ["rankshard"]
CMD ["--help"]
