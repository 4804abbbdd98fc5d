"""Credentials out of every URI in a text: what is logged, raised or dead-lettered carries none.

One function, ``redact_credentials``, applied where a URI is logged or raised (the model
loaders, the holder) and, as a net, to every JSON log line (``json_logging``). See
docs/design.md, "No credentials in logs, errors, dead letters or output".
"""

from __future__ import annotations

import re

# The user-info of a URI (``scheme://user:password@``: everything up to the authority's last
# ``@``) and a query parameter (``?name=value`` or ``&name=value``, also in a URL's path-only
# form, as urllib3 quotes it). A backslash ends a value so that an escaped quote in JSON text
# stays escaped.
_USER_INFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s'\"<>\\]*@")
_QUERY_PARAMETER = re.compile(r"(?P<head>[?&](?P<name>[^=&#?\s'\"<>\\]+)=)[^&#\s'\"<>\\]+")
# Parameter names that hold a credential, as a whole name or as one of its parts (split at
# ``-``, ``_`` and ``.``): access_token, X-Amz-Signature, X-Goog-Credential, sig, api_key, ...
_CREDENTIAL_WORDS = frozenset(
    [
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "pass",
        "sig",
        "signature",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "key",
        "apikey",
        "code",
        "sas",
        "session",
        "jwt",
        "assertion",
    ]
)
_CREDENTIAL_SUFFIXES = ("token", "key", "secret", "password")
REDACTED = "***"


def _holds_a_credential(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(_CREDENTIAL_SUFFIXES) or any(
        part in _CREDENTIAL_WORDS for part in re.split(r"[-_.]", lowered)
    )


def redact_credentials(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***``: user-info
    (``http://user:secret@host`` becomes ``http://***@host``) and the values of query
    parameters named like a credential (``?access_token=***``, ``X-Amz-Signature=***``).

    Applied to every URI and every error text that may quote one before it is logged or raised
    (a tracking server's failing request quotes its URL). Cheap on text without one.
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USER_INFO.sub(rf"\g<scheme>{REDACTED}@", text)
    return _QUERY_PARAMETER.sub(
        lambda match: (
            f"{match['head']}{REDACTED}" if _holds_a_credential(match["name"]) else match[0]
        ),
        text,
    )
