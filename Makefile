# The two commands a user needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/consumer.example.yaml
SYSTEM_PACKAGES := docker-registry skopeo redis-server nginx-light prometheus wrk docker-compose

.PHONY: venv run test lint typecheck system-deps bench demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	@$(BIN)/python scripts/ensure_redis.py "$${REGISTRY_CONSUMER_REDIS_URL:-redis://127.0.0.1:6379/0}"
	$(BIN)/registry-consumer serve --config $(CONFIG)

# Installs the Debian packages the end-to-end tests drive, when missing and when we are root.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "missing system packages (run as root to install):$$missing" >&2; fi; \
	fi

lint: venv
	$(BIN)/ruff check consumer tests $(wildcard bench scripts)
	$(BIN)/mypy consumer

test: venv system-deps
	$(BIN)/ruff check consumer tests $(wildcard bench scripts)
	$(BIN)/mypy consumer
	$(BIN)/pytest -q -rs tests

bench: venv system-deps
	$(BIN)/python bench/webhook_bench.py

demo: venv system-deps
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Secret files for docker-compose.yml, in ./secrets (git-ignored): the consumer's HS256 secret, the registry's
# notification token and an index:read token minted with it, Grafana's admin password, and (scripts/
# compose_secrets.py) the registry token server's key pair, JWKS, users' passwords and rendered config.
# Existing files are kept; delete one to regenerate it. The directory is private; the files the consumer
# container (uid 10001) reads are world-readable because compose bind-mounts them unchanged.
.PHONY: secrets
secrets: venv
	@mkdir -p secrets && chmod 700 secrets
	@$(BIN)/python scripts/compose_secrets.py secrets
	@test -s secrets/consumer_jwt_secret || $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(48))' > secrets/consumer_jwt_secret
	@test -s secrets/grafana_admin_password || $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(18))' > secrets/grafana_admin_password
	@test -s secrets/registry_notify_token || { env -u REGISTRY_CONSUMER_JWT_SECRET -u REGISTRY_CONSUMER_CONFIG \
	  REGISTRY_CONSUMER_JWT_SECRET_FILE=secrets/consumer_jwt_secret $(BIN)/registry-consumer \
	  --config config/consumer.compose.yaml token mint --sub registry --scope events:write --ttl 365d \
	  > secrets/registry_notify_token.tmp && mv secrets/registry_notify_token.tmp secrets/registry_notify_token; }
	@test -s secrets/consumer_admin_token || { env -u REGISTRY_CONSUMER_JWT_SECRET -u REGISTRY_CONSUMER_CONFIG \
	  REGISTRY_CONSUMER_JWT_SECRET_FILE=secrets/consumer_jwt_secret $(BIN)/registry-consumer \
	  --config config/consumer.compose.yaml token mint --sub operator --scope index:read --ttl 30d \
	  > secrets/consumer_admin_token.tmp && mv secrets/consumer_admin_token.tmp secrets/consumer_admin_token; }
	@chmod 644 secrets/consumer_jwt_secret secrets/grafana_admin_password secrets/registry_notify_token
	@chmod 600 secrets/consumer_admin_token
	@echo "secrets ready in ./secrets (docker compose up -d)"
