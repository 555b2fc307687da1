"""Question rewriting, the common cases of CoreDNS's rewrite plugin: ``rewrite name exact FROM TO``
(--rewrite-name) and ``rewrite name suffix FROM TO`` (--rewrite-suffix), both with ``answer auto``:
the rewritten name is answered, and the answer's owner names are given back the question's
spelling, so a client sees its own name (a stub resolver drops answers owned by another name).

The first rule that matches wins, exact rules before suffix rules (CoreDNS applies rules in order
and stops at the first by default; exact and suffix rarely both match one name). A rewritten name
that kdns does not answer itself (outside the served zones and the hosts file) is not rewritten:
the forwarder relays a reply to the question as asked, so the original name goes upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdns import answer as ans
from kdns.config import ConfigError


@dataclass(frozen=True, slots=True)
class Rules:
    exact: tuple[tuple[str, str], ...] = ()     # (from, to), lower case, trailing dot
    suffix: tuple[tuple[str, str], ...] = ()    # (from, to), lower case, leading and trailing dot

    def __bool__(self) -> bool:
        return bool(self.exact or self.suffix)


def parse_rule(text: str, flag: str, suffix: bool = False) -> tuple[str, str]:
    """'FROM=TO' -> the rule, names normalised; ConfigError worded for the flag."""
    if text.count("=") != 1:
        raise ConfigError(f"{flag} {text!r}: expected FROM=TO")
    pair = []
    for part in text.split("="):
        name = part.strip().strip(".").lower()
        if not name or any(not label or len(label) > 63 for label in name.split(".")):
            raise ConfigError(f"{flag} {text!r}: {part!r} is not a DNS name")
        pair.append(("." if suffix else "") + name + ".")
    return pair[0], pair[1]


def rewritten(rules: Rules, qname: str) -> tuple[str, str, str] | None:
    """(new name, from, to) for the first rule matching ``qname`` (trailing dot), or None."""
    lower = qname.lower()
    for old, new in rules.exact:
        if lower == old:
            return new, old, new
    for old, new in rules.suffix:
        if lower.endswith(old) or lower == old[1:]:
            return lower[:-len(old)] + new if lower != old[1:] else new[1:], old, new
    return None


def answer(snap, qname: str, qtype: int, rules: Rules) -> ans.Response:
    """ans.answer, through the rules."""
    if not qname.endswith("."):
        qname += "."
    hit = rewritten(rules, qname) if rules else None
    if hit is None:
        return ans.answer(snap, qname, qtype)
    name, old, new = hit
    resp = ans.answer(snap, name, qtype)
    if resp.forward:
        return ans.answer(snap, qname, qtype)      # not ours to answer: forward the question as asked
    target = name.lower()
    for i, (owner, rtype, ttl, data) in enumerate(resp.answer):
        low = owner.lower()
        if low == target:
            resp.answer[i] = (qname, rtype, ttl, data)
        elif old.startswith(".") and low.endswith(new):
            # answer auto for suffix rules: every owner under the new suffix gets the old one
            # back, spelled as the question spelled it.
            resp.answer[i] = (owner[:-len(new)] + qname[-len(old):], rtype, ttl, data)
    return resp
