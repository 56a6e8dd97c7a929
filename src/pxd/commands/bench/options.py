"""The bench's list options as users type them: '2,8,16', 'all', 'fgsm,bim',
'cw.search_steps=2'. Each parser returns the parsed value or raises a one-line PxdError."""

from __future__ import annotations

from pxd.commands.bench.paper import DEFENCES, KNOWN_ATTACKS, PAPER_ATTACKS
from pxd.configs.base import check_eps
from pxd.errors import PxdError


def _items(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def parse_eps_list(s: str, name: str = "--eps-attack") -> list[int]:
    """'2,8,16' -> [2, 8, 16] (sorted, unique integers on the 0..255 scale)."""
    try:
        vals = [float(v) for v in _items(s)]
    except ValueError:
        raise PxdError(f"{name} must be comma-separated numbers, got {s!r}") from None
    if not vals:
        raise PxdError(f"{name} names no value")
    return sorted({check_eps(v, name) for v in vals})


def _choose(s: str, what: str, known, all_) -> list[str]:
    """'all' or a comma list of names from `known`, returned in table order."""
    names = list(all_) if s.strip() == "all" else _items(s)
    bad = [a for a in names if a not in known]
    if bad or not names:
        raise PxdError(f"unknown {what} {', '.join(bad) or repr(s)} "
                       f"(choose from all, {', '.join(known)})")
    return [a for a in known if a in names]


def parse_attacks(s: str) -> list[str]:
    return _choose(s, "attack", KNOWN_ATTACKS, PAPER_ATTACKS)


def parse_defences(s: str) -> list[str]:
    return _choose(s, "defence", DEFENCES, DEFENCES)


def _scalar(v: str):
    low = v.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    raise PxdError(f"attack option value {v!r} is not a number, true/false or none")


def parse_attack_opts(items: list[str] | None) -> dict[str, dict]:
    """['deepfool.max_iter=3', 'cw.search_steps=1'] -> {'deepfool': {'max_iter': 3}, ...}.

    Keys are checked against the attack's keyword options (e.g. cw: search_steps,
    max_iterations; deepfool: max_iter; bim/pgd: steps)."""
    from pxd.core import attacks

    out: dict[str, dict] = {}
    for item in items or []:
        head, sep, value = item.partition("=")
        attack, dot, opt = head.strip().partition(".")
        if not sep or not dot or not opt:
            raise PxdError(f"--attack-opt {item!r}: use ATTACK.OPTION=VALUE, "
                           "e.g. cw.search_steps=2")
        if attack not in attacks.ATTACKS:
            raise PxdError(f"--attack-opt {item!r}: unknown attack {attack!r}")
        allowed = list(attacks.ATTACKS[attack].defaults())
        if opt not in allowed:
            raise PxdError(f"--attack-opt {item!r}: {attack} has no option {opt!r} "
                           f"(options: {', '.join(allowed) or 'none'})")
        out.setdefault(attack, {})[opt] = _scalar(value)
    from pxd.api import check_attack_options

    try:  # the values' types and ranges, as the API checks them
        return {a: check_attack_options(a, o) for a, o in out.items()}
    except PxdError as e:
        raise PxdError(f"--attack-opt: {e}") from None
