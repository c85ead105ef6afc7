"""A sweep's search space from the command line: ``key=a,b,c`` lists, ``uniform(a,b)``, ``loguniform(a,b)``,
``randint(a,b)``; the planned trials of a grid or a seeded random search; each axis as an Optuna distribution."""

from __future__ import annotations

import itertools
import math
import random
import re
from typing import Any

from trainyard.errors import ConfigError

RANGE = re.compile(r"^(uniform|loguniform|randint)\((.*)\)$")
KINDS = ("uniform", "loguniform", "randint")
CALL = re.compile(r"^([A-Za-z_]\w*)\s*\(")  # looks like a function call: a range, or a typo of one


def split_values(text: str) -> list[str]:
    """``0.1,0.01`` -> [``0.1``, ``0.01``]; commas inside [], {}, () or quotes do not split (``[a,b],[c]``)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _check_call(key: str, text: str) -> None:
    """``uniform(1e-3)``, ``loguniform(a,b``, ``normal(0,1)``: one line naming what was expected."""
    call = CALL.match(text)
    if call is None:
        return
    name = call.group(1)
    if name not in KINDS:
        from trainyard.config import suggest

        raise ConfigError(
            f"{key}={text}: not a range this sweep knows{suggest(name, KINDS)}; ranges: uniform(LOW,HIGH), loguniform(LOW,HIGH), "
            "randint(LOW,HIGH)"
        )
    if not RANGE.match(text):
        raise ConfigError(
            f"{key}={text}: does not parse; expected {name}(LOW,HIGH), e.g. {name}(1e-4,1e-1)"
            if name != "randint"
            else f"{key}={text}: does not parse; expected randint(LOW,HIGH), e.g. randint(16,64)"
        )
    _range(key, text)


def parse_sweep_args(items: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Fixed overrides (one value) and sweep axes (``key=v1,v2,...`` or ``key=loguniform(a,b)``)."""
    fixed: list[str] = []
    axes: dict[str, list[str]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not eq or not key:
            raise ConfigError(f"{item!r}: expected key.sub=value or key.sub=v1,v2,...")
        if key in ("name",):
            raise ConfigError(f"{item}: the sweep names each trial's run itself (trial-000, ...); name the sweep with --name")
        if key in axes:
            raise ConfigError(f"{key}: given twice")
        _check_call(key, text)
        values = split_values(text)
        if RANGE.match(text) or len(values) > 1:  # values to sweep replace a fixed value given before (later wins, as in train)
            fixed = [f for f in fixed if f.partition("=")[0].strip() != key]
        if RANGE.match(text):
            axes[key] = [text]
            continue
        if len(values) > 1:
            if any(v == "" for v in values):
                raise ConfigError(f"{item}: empty value in the list")
            for v in values:
                _check_call(key, v)
            axes[key] = values
        else:
            fixed.append(item)
    return fixed, axes


def _range(key: str, spec: str) -> tuple[str, float, float]:
    kind, args = RANGE.match(spec).groups()  # type: ignore[union-attr]
    try:
        low, high = (float(a) for a in args.split(","))
    except ValueError:
        raise ConfigError(f"{key}={spec}: does not parse; expected {kind}(LOW,HIGH) with two numbers") from None
    if kind == "randint" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{key}={spec}: randint takes two integers")
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ConfigError(f"{key}={spec}: need LOW < HIGH{' and LOW > 0' if kind == 'loguniform' else ''}")
    return kind, low, high


def ranges(axes: dict[str, list[str]]) -> dict[str, tuple[str, float, float]]:
    return {k: _range(k, v[0]) for k, v in axes.items() if len(v) == 1 and RANGE.match(v[0])}


def format_value(kind: str, value: Any) -> str:
    if kind == "randint":
        return str(int(value))
    return f"{value:.6g}"


def plan_trials(axes: dict[str, list[str]], random_trials: int | None, seed: int) -> list[list[str]]:
    """Each trial's overrides: the full grid, or ``random_trials`` samples (choices from lists, draws from ranges)."""
    spans = ranges(axes)
    if random_trials is None:
        if spans:
            raise ConfigError(f"{next(iter(spans))}: a range needs random search (--random N) or --search tpe --trials N")
        return [[f"{k}={v}" for k, v in zip(axes, combo)] for combo in itertools.product(*axes.values())]
    rng = random.Random(seed)
    lists = {k: v for k, v in axes.items() if k not in spans}
    grid = list(itertools.product(*lists.values()))
    if not spans:  # distinct samples of the grid
        picks = rng.sample(grid, min(random_trials, len(grid)))
        return [[f"{k}={v}" for k, v in zip(lists, combo)] for combo in picks]
    trials = []
    for _ in range(random_trials):
        trial = []
        for key in axes:
            if key in spans:
                kind, low, high = spans[key]
                if kind == "uniform":
                    value = rng.uniform(low, high)
                elif kind == "loguniform":
                    value = math.exp(rng.uniform(math.log(low), math.log(high)))
                else:
                    value = rng.randint(int(low), int(high))
                value = min(max(float(format_value(kind, value)), low), high)  # the printed value, inside the range
                trial.append(f"{key}={format_value(kind, value)}")
            else:
                trial.append(f"{key}={rng.choice(lists[key])}")
        trials.append(trial)
    return trials


def distributions(axes: dict[str, list[str]]) -> dict[str, Any]:
    """Each axis as the Optuna distribution its trials' values come from (lists: categorical strings)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    spans = ranges(axes)
    out: dict[str, Any] = {}
    for key, values in axes.items():
        if key in spans:
            kind, low, high = spans[key]
            out[key] = IntDistribution(int(low), int(high)) if kind == "randint" else FloatDistribution(low, high, log=kind == "loguniform")
        else:
            out[key] = CategoricalDistribution(list(values))
    return out


def params_of(overrides: list[str], axes: dict[str, list[str]]) -> dict[str, Any]:
    """A planned trial's overrides as Optuna params (the values its distributions hold)."""
    spans = ranges(axes)
    params: dict[str, Any] = {}
    for item in overrides:
        key, _, text = item.partition("=")
        if key in spans:
            params[key] = int(text) if spans[key][0] == "randint" else float(text)
        else:
            params[key] = text
    return params


def overrides_of(params: dict[str, Any], axes: dict[str, list[str]]) -> list[str]:
    """A trial's params back as ``key=value`` overrides, in the command's order."""
    spans = ranges(axes)
    return [f"{k}={format_value(spans[k][0], params[k]) if k in spans else params[k]}" for k in axes if k in params]


def space_difference(mine: dict[str, list[str]], theirs: dict[str, list[str]]) -> list[str]:
    """The keys whose values differ between two search spaces (missing on one side counts)."""
    return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
