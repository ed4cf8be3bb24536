"""Network and client artefacts shared by benign and attacker accounts alike.

Both populations draw IPs, user agents and TLS fingerprints from the same generators, so no
artefact *format* gives a label away: what differs is how they are shared and rotated, which is
what real campaigns show.
"""

from __future__ import annotations

import numpy as np

# First octets of large residential ISP and mobile carrier allocations (public space).
RESIDENTIAL_FIRST_OCTETS = (24, 47, 67, 68, 71, 73, 76, 86, 90, 98, 99, 109, 174, 176, 184, 189)
# First octets of big cloud providers' ranges.
CLOUD_FIRST_OCTETS = (3, 13, 18, 20, 34, 35, 40, 44, 52, 54, 104, 130, 146)

BROWSER_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{s} Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{s} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{s} Mobile/15E148 Safari/604.1",
)
SDK_UAS = (
    "OpenAI/Python 1.{m}.{p}",
    "AsyncOpenAI/Python 1.{m}.{p}",
    "OpenAI/JS 4.{m}.{p}",
    "python-httpx/0.2{p}.{m}",
    "python-requests/2.3{p}.{m}",
    "langchain-openai/0.{m}.{p}",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "Go-http-client/2.0",
)
# JA4-style TLS client fingerprints per client family (a family shares a handful of them).
TLS_BY_FAMILY = {
    "browser": ("t13d1516h2_8daaf6152771_02713d6af862", "t13d1517h2_8daaf6152771_b0da82dd1658",
                "t13d1715h2_5b57614c22b0_3d5424432f57"),
    "sdk": ("t13d1812h1_85036bcba153_f2d3d5b1c1bf", "t13d1911h1_e8f1e7e78f70_2c3d8d2b5d1a",
            "t13d301100_1d37bd780c83_9e2d4c5e6f7a"),
}  # fmt: skip


class Infrastructure:
    """Draws addresses and client fingerprints from one seeded generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def residential_prefix(self) -> str:
        first = self.rng.choice(RESIDENTIAL_FIRST_OCTETS)
        return f"{first}.{self.rng.integers(0, 256)}.{self.rng.integers(0, 256)}"

    def cloud_prefix(self) -> str:
        first = self.rng.choice(CLOUD_FIRST_OCTETS)
        return f"{first}.{self.rng.integers(0, 256)}.{self.rng.integers(0, 256)}"

    def host(self, prefix: str) -> str:
        return f"{prefix}.{self.rng.integers(1, 255)}"

    def residential_ip(self) -> str:
        return self.host(self.residential_prefix())

    def cloud_ip(self) -> str:
        return self.host(self.cloud_prefix())

    def user_agent(self, family: str) -> str:
        pool = BROWSER_UAS if family == "browser" else SDK_UAS
        template = pool[self.rng.integers(0, len(pool))]
        return template.format(
            v=self.rng.integers(118, 131),
            m=self.rng.integers(0, 60),
            p=self.rng.integers(0, 9),
            s=self.rng.integers(0, 7),
        )

    def tls(self, family: str) -> str:
        pool = TLS_BY_FAMILY["browser" if family == "browser" else "sdk"]
        return pool[self.rng.integers(0, len(pool))]

    def payment_fingerprint(self) -> str:
        return "pm_" + "".join(self.rng.choice(list("0123456789abcdef"), 16))
