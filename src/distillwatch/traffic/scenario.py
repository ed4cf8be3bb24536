"""Scenario files: what population and which campaigns to simulate (YAML, validated strictly).

Every key is documented in ``docs/simulator.md``. Unknown keys are errors that name the key, so
a typo cannot silently fall back to a default.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from distillwatch.errors import ScenarioError
from distillwatch.yamlfile import parse_yaml

PRESETS = ("small", "week", "disclosure", "split", "two_labs")
CLIENTS = ("browser", "sdk", "mixed")
NETWORKS = ("home", "corporate_nat", "datacenter", "proxy_exit")
TACTICS = (
    "hydra_pool",
    "account_burst",
    "templated_self_instruct",
    "cot_elicitation",
    "capability_sweep",
    "evol_instruct",
    "low_and_slow",
    "launch_surge",
    "mix_legit",
    "adaptive",
    "own_infra",
    "paraphrase",
    "reseller",
    "language",
    "scheduler_waves",
    "replacements",
)
#: Tactics that supply a campaign's prompts (a campaign needs at least one).
PROMPT_SOURCES = ("templated_self_instruct", "capability_sweep", "evol_instruct", "paraphrase")
LANGUAGES = ("en", "zh")


@dataclass
class BenignPersona:
    persona: str
    accounts: int
    prompts: list[str]
    daily_requests: float = 6.0
    active_days: float = 0.5
    client: str = "browser"
    network: str = "home"
    diurnal: bool = True
    multi_turn: float = 0.3
    hard_negative: bool = False
    template: str | None = None
    system_prompt: str | None = None
    one_shot: bool = False
    output_tokens: int = 250
    accounts_per_nat: int = 25
    #: A shared assignment every account works through (a class's homework): {pool, items,
    #: wrapper (with {p}), share (of the account's requests)}.
    homework: dict[str, Any] | None = None
    #: All accounts opened within this many minutes of each other (an enrolment, an onboarding).
    created_within_minutes: float | None = None
    #: Each prompt sent to this many different models (comparative evaluation).
    models_per_prompt: int = 1
    #: The whole prompt set run this many times, on different days (repeated evaluation runs).
    repeat_runs: int = 1
    #: en, or zh (Chinese speakers: Chinese prompts, sometimes asking for steps in Chinese).
    language: str = "en"
    timezone: int | None = None
    #: Each account runs its own scheduled job every this many minutes on the wall clock (cron's
    #: "*/N": every account fires at the same minutes), ``daily_requests`` spread over the runs.
    schedule_minutes: float | None = None


@dataclass
class Campaign:
    id: str
    accounts: int
    tactics: dict[str, dict[str, Any]]
    daily_requests: float = 40.0
    start_day: float = 1.0
    end_day: float | None = None
    output_tokens: int = 700


@dataclass
class Scenario:
    name: str
    start: datetime
    days: float
    base_models: list[str]
    launch_model: str | None
    launch_day: float | None
    benign: list[BenignPersona]
    campaigns: list[Campaign] = field(default_factory=list)


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a mapping")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ScenarioError(
            f"{where}.{unknown[0]}: unknown field (allowed: {', '.join(sorted(names))})"
        )
    required = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ScenarioError(f"{where}.{missing[0]}: required")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _positive(value: Any, where: str, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{where}: expected a number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ScenarioError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}")


def parse_scenario(doc: Any, source: str = "<scenario>") -> Scenario:
    """Validate a decoded scenario document."""
    if not isinstance(doc, dict):
        raise ScenarioError(f"{source}: expected a YAML mapping at the top level")
    allowed = {"name", "start", "days", "models", "benign", "campaigns"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ScenarioError(
            f"{unknown[0]}: unknown top-level field (allowed: {', '.join(sorted(allowed))})"
        )
    for key in ("name", "start", "days", "models", "benign"):
        if key not in doc:
            raise ScenarioError(f"{key}: required")
    start = doc["start"]
    if isinstance(start, str):
        try:
            start = datetime.fromisoformat(start)
        except ValueError:
            raise ScenarioError(f"start: not an RFC 3339 time: {start!r}") from None
    if not isinstance(start, datetime):
        raise ScenarioError("start: expected an RFC 3339 time")
    start = start.astimezone(UTC).replace(tzinfo=None) if start.tzinfo else start
    _positive(doc["days"], "days")
    models = doc["models"]
    if (
        not isinstance(models, dict)
        or not isinstance(models.get("base"), list)
        or not models["base"]
    ):
        raise ScenarioError("models.base: expected a non-empty list of model names")
    launch = models.get("launch") or {}
    if launch and (not isinstance(launch.get("model"), str) or "at_day" not in launch):
        raise ScenarioError("models.launch: expected {model: NAME, at_day: DAY}")
    if not isinstance(doc["benign"], list) or not doc["benign"]:
        raise ScenarioError("benign: expected a non-empty list of personas")
    benign = [_build(BenignPersona, raw, f"benign[{i}]") for i, raw in enumerate(doc["benign"])]
    for i, persona in enumerate(benign):
        where = f"benign[{i}]"
        _positive(persona.accounts, f"{where}.accounts")
        _positive(persona.daily_requests, f"{where}.daily_requests")
        if persona.client not in CLIENTS:
            raise ScenarioError(f"{where}.client: one of {', '.join(CLIENTS)}")
        if persona.network not in NETWORKS:
            raise ScenarioError(f"{where}.network: one of {', '.join(NETWORKS)}")
        if not 0 < persona.active_days <= 1:
            raise ScenarioError(f"{where}.active_days: a fraction in (0, 1]")
        if not persona.prompts:
            raise ScenarioError(f"{where}.prompts: name at least one human pool")
        if persona.language not in LANGUAGES:
            raise ScenarioError(f"{where}.language: one of {', '.join(LANGUAGES)}")
        if persona.homework is not None and (
            not isinstance(persona.homework, dict) or "pool" not in persona.homework
        ):
            raise ScenarioError(f"{where}.homework: expected {{pool, items, wrapper, share}}")
    campaigns = [
        _build(Campaign, raw, f"campaigns[{i}]") for i, raw in enumerate(doc.get("campaigns") or [])
    ]
    for i, campaign in enumerate(campaigns):
        where = f"campaigns[{i}]"
        _positive(campaign.accounts, f"{where}.accounts")
        _positive(campaign.daily_requests, f"{where}.daily_requests")
        if not isinstance(campaign.tactics, dict) or not campaign.tactics:
            raise ScenarioError(f"{where}.tactics: expected a mapping of tactic -> options")
        for tactic, options in campaign.tactics.items():
            if tactic not in TACTICS:
                raise ScenarioError(
                    f"{where}.tactics.{tactic}: unknown tactic (known: {', '.join(TACTICS)})"
                )
            if options is not None and not isinstance(options, dict):
                raise ScenarioError(f"{where}.tactics.{tactic}: options must be a mapping")
            campaign.tactics[tactic] = options or {}
        if not any(t in campaign.tactics for t in PROMPT_SOURCES):
            raise ScenarioError(
                f"{where}.tactics: needs a prompt source: {', '.join(PROMPT_SOURCES)}"
            )
        language = campaign.tactics.get("language", {}).get("lang", "en")
        if language not in LANGUAGES:
            raise ScenarioError(f"{where}.tactics.language.lang: one of {', '.join(LANGUAGES)}")
    return Scenario(
        name=str(doc["name"]),
        start=start,
        days=float(doc["days"]),
        base_models=[str(m) for m in models["base"]],
        launch_model=launch.get("model"),
        launch_day=float(launch["at_day"]) if launch else None,
        benign=benign,
        campaigns=campaigns,
    )


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped preset by name, or a user's YAML file."""
    text: str
    if str(name_or_path) in PRESETS:
        text = (
            resources.files("distillwatch.traffic.presets")
            .joinpath(f"{name_or_path}.yaml")
            .read_text()
        )
        source = f"preset {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ScenarioError(
                f"{name_or_path}: not a preset ({', '.join(PRESETS)}) and no such YAML file"
            )
        text, source = path.read_text(), str(path)
    return parse_scenario(parse_yaml(text, source, ScenarioError), source)
