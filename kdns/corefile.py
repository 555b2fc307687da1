"""The Corefile's syntax, as CoreDNS reads it (Caddy's): server blocks ``ZONE[:PORT] [ZONE...] {
... }``, one directive per line, an option block in braces, ``#`` comments, quotes, ``{$ENV}``.
What the plugins mean to kdns is kdns.translate's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

class CorefileError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Line:
    name: str
    args: list[str]
    line: int
    block: list["Line"] | None = None


@dataclass
class Server:
    keys: list[tuple[str, int]]              # (zone, port)
    line: int
    directives: list[Line] = field(default_factory=list)


# ----------------------------------------------------------------------------- parsing

def _env(token: str) -> str:
    return re.sub(r"\{\$(\w+)\}|\{%(\w+)%\}",
                  lambda m: os.environ.get(m.group(1) or m.group(2), ""), token)


def tokens(text: str, where: str = "Corefile") -> list[list[tuple[str, int]]]:
    """The Corefile as lines of (token, line number); braces are tokens of their own."""
    out: list[list[tuple[str, int]]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line: list[tuple[str, int]] = []
        i, n = 0, len(raw)
        while i < n:
            ch = raw[i]
            if ch.isspace():
                i += 1
            elif ch == "#":
                break
            elif ch == '"':
                j, buf = i + 1, ""
                while j < n and raw[j] != '"':
                    if raw[j] == "\\" and j + 1 < n:
                        j += 1
                    buf += raw[j]
                    j += 1
                if j >= n:
                    raise CorefileError([f"{where}:{number}: unterminated quote"])
                line.append((_env(buf), number))
                i = j + 1
            else:
                j = i
                while j < n and not raw[j].isspace():
                    j += 1
                line.append((_env(raw[i:j]), number))      # '{' and '}' stand alone, as Caddy's
                i = j
        if line:
            out.append(line)
    return out


def parse(text: str, where: str = "Corefile") -> list[Server]:
    lines = tokens(text, where)
    servers: list[Server] = []
    i = 0
    while i < len(lines):
        keys = [t for t in lines[i]]
        # Keys may continue over lines ending with a comma.
        while keys and keys[-1][0].endswith(",") and i + 1 < len(lines):
            i += 1
            keys += lines[i]
        start = keys[0][1]
        if keys[0][0] == "import":
            raise CorefileError([f"{where}:{start}: 'import' is not supported by kdns"])
        if keys[-1][0] != "{":
            raise CorefileError([f"{where}:{start}: expected a server block "
                                 f"'{keys[0][0]} {{ ... }}'"])
        server = Server([], start)
        for token, number in keys[:-1]:
            for part in token.split(","):
                if part:
                    server.keys.append(_key(part, number, where))
        i += 1
        depth_block: list[Line] | None = None
        while True:
            if i >= len(lines):
                raise CorefileError([f"{where}:{start}: server block not closed with '}}'"])
            toks = lines[i]
            i += 1
            words = [t for t, _ in toks]
            number = toks[0][1]
            if words == ["}"]:
                if depth_block is not None:
                    depth_block = None
                    continue
                break
            if depth_block is not None:
                if "{" in words or "}" in words:
                    raise CorefileError([f"{where}:{number}: nested blocks are not supported"])
                depth_block.append(Line(words[0], words[1:], number))
                continue
            if words[0] == "import":
                raise CorefileError([f"{where}:{number}: 'import' is not supported by kdns"])
            if words[-1] == "{":
                d = Line(words[0], words[1:-1], number, [])
                server.directives.append(d)
                depth_block = d.block
            elif "{" in words or "}" in words:
                if words[-1] == "}" and "{" in words:         # 'health { lameduck 5s }' on one line
                    at = words.index("{")
                    d = Line(words[0], words[1:at], number, [])
                    if len(words) > at + 2:
                        d.block.append(Line(words[at + 1], words[at + 2:-1], number))
                    server.directives.append(d)
                else:
                    raise CorefileError([f"{where}:{number}: unexpected brace"])
            else:
                server.directives.append(Line(words[0], words[1:], number))
        servers.append(server)
    if not servers:
        raise CorefileError([f"{where}: no server block"])
    return servers


def _key(text: str, number: int, where: str) -> tuple[str, int]:
    for scheme in ("dns://",):
        if text.startswith(scheme):
            text = text[len(scheme):]
    if "://" in text:
        raise CorefileError([f"{where}:{number}: server '{text}': only plain DNS (dns://) is "
                             "supported by kdns"])
    zone, _, port = text.partition(":")
    if port and not port.isdigit():
        raise CorefileError([f"{where}:{number}: server '{text}': bad port"])
    zone = zone.strip(".").lower()
    return zone, int(port) if port else 53


