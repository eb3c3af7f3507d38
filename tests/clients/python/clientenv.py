"""Connection settings for the client tests, set by tests/clients.rs.

PGTENANT_URL_A / PGTENANT_URL_B  postgres://anyname:<JWT>@127.0.0.1:<proxy port>/app
TENANT_A / TENANT_B              the tenants of those tokens
PGTENANT_ADMIN_URL               superuser straight to PostgreSQL (ignores RLS), for checks
PGTENANT_POOL_SIZE               the proxy's upstream.pool_size
"""

import os
import uuid


def _required(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"environment variable {name} is not set: run these tests through `cargo test --test clients`")
    return value


URL_A = _required("PGTENANT_URL_A")
URL_B = _required("PGTENANT_URL_B")
TENANT_A = _required("TENANT_A")
TENANT_B = _required("TENANT_B")
ADMIN_URL = _required("PGTENANT_ADMIN_URL")
POOL_SIZE = int(_required("PGTENANT_POOL_SIZE"))

#: Both tenants with their URLs, for tests that do the same for each.
TENANTS = ((TENANT_A, URL_A), (TENANT_B, URL_B))

TENANT_SQL = "SELECT current_setting('app.current_tenant_id') AS tenant"


def marker(what):
    """A tool_name unique to one test, so tests never see each other's rows."""
    return f"{what}-{uuid.uuid4()}"
