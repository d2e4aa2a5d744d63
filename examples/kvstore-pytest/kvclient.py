"""A small client for the kvstore server's line protocol: the library this suite tests.

One command per line (`SET key value`, `GET key`, `DEL key`, `COUNT`); one reply line each
(`OK`, `VALUE v`, `NONE`, `DELETED n`, `COUNT n`, `ERR message`).
"""

import socket


class KvError(Exception):
    """The server refused a command."""


def parse_reply(line):
    """The Python value of one reply line."""
    word, _, rest = line.rstrip("\n").partition(" ")
    if word == "OK" and not rest:
        return True
    if word == "VALUE":
        return rest
    if word == "NONE" and not rest:
        return None
    if word in ("DELETED", "COUNT"):
        return int(rest)
    if word == "ERR":
        raise KvError(rest)
    raise ValueError(f"not a kvstore reply: {line!r}")


class Client:
    def __init__(self, addr, timeout=10.0):
        host, _, port = addr.rpartition(":")
        self._sock = socket.create_connection((host, int(port)), timeout=timeout)
        self._file = self._sock.makefile("rw", encoding="utf-8", newline="\n")

    def call(self, *words):
        if any(" " in w or "\n" in w for w in words[:2]):
            raise ValueError("commands and keys are single words")
        self._file.write(" ".join(words) + "\n")
        self._file.flush()
        line = self._file.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        return parse_reply(line)

    def set(self, key, value):
        return self.call("SET", key, value)

    def get(self, key):
        return self.call("GET", key)

    def delete(self, key):
        return self.call("DEL", key)

    def count(self):
        return self.call("COUNT")

    def close(self):
        self._file.close()
        self._sock.close()
