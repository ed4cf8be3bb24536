"""The proxy as an outsider tests it: requests generated from OpenAI's published OpenAPI
description (schemathesis), valid and invalid, sent to the real proxy over loopback.

Bounded in count (and so in time): a few hundred requests. Every answer must be below 500 and,
when it is an error, in OpenAI's error shape; every request the proxy served must be in its log.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from distillwatch.paths import shared_data_dir
from distillwatch.store import Store
from tests.gateway import stop

schemathesis = pytest.importorskip("schemathesis")
pytestmark = pytest.mark.e2e
PROXIED = r"^/(chat/completions|completions|embeddings|models|responses)$"
EXAMPLES = 200  # per generation mode


@pytest.fixture(scope="module")
def openai_schema():
    shared = shared_data_dir()
    spec = shared.parent / "specs" / "openai-openapi" / "openapi.yaml" if shared else None
    if spec is None or not spec.exists():
        pytest.skip("../shared/specs/openai-openapi/openapi.yaml not found")
    schema = schemathesis.openapi.from_path(str(spec)).include(path_regex=PROXIED)
    return schema.exclude(method="GET", path="/chat/completions")  # stored completions: not proxied


def test_fuzz_the_proxy_from_openais_openapi_description(proxy, openai_schema, tmp_path):
    from schemathesis import GenerationMode

    store = tmp_path / "fuzz.duckdb"
    base, _ = proxy("--max-body-bytes", "1000000", store=store)
    seen: Counter[tuple[str, int]] = Counter()
    served = 0

    def check(case, account: str) -> None:  # type: ignore[no-untyped-def]
        nonlocal served
        # schemathesis serialises the case itself (invalid bodies included) and sends it.
        response = case.call(base_url=f"{base}/v1", headers={"Authorization": f"Bearer sk-{account}"},
                             timeout=30)  # fmt: skip
        seen[(case.path, response.status_code)] += 1
        assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert isinstance(error["message"], str) and isinstance(error["type"], str)
        elif case.method == "POST":
            served += 1

    def fuzzer(mode, account: str):  # type: ignore[no-untyped-def]
        @settings(max_examples=EXAMPLES // 2, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=openai_schema.as_strategy(mode))
        def fuzz(case):  # type: ignore[no-untyped-def]
            check(case, account)

        return fuzz

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for account in ("good", "suspect"):  # suspect's requests are rewritten (shaped)
            fuzzer(mode, account)()
    metrics = httpx.get(f"{base}/metrics").text
    assert "distillwatch_internal_errors_total" not in metrics or all(
        line.endswith(" 0.0") for line in metrics.splitlines() if line.startswith("distillwatch_internal_errors_total")
    )  # fmt: skip
    print("fuzz:", sum(seen.values()), "requests,", served, "served,", sorted(seen.items()))
    assert sum(seen.values()) >= EXAMPLES * 2 * 0.9 and served > 20, seen
    time.sleep(0.5)
    for process in proxy.processes:
        stop(process)
    with Store(store, read_only=True) as db:
        logged = db.run("SELECT count(*) FROM exchanges")[0][0]
    assert logged == served  # every request the proxy served is in its log
