"""Why a secure-aggregation step was refused.

Every refusal has its own class so that the transport can react to the kind of
failure (log and drop a forged message, abort a session, tell an operator to fix
an input) without parsing text, and every message names the site concerned and
the problem, because an operator reading a log has no other context.
"""

from __future__ import annotations

from her2fed.errors import Her2fedError


class SecAggError(Her2fedError):
    """Base of every refusal in the secure-aggregation protocol.

    ``site`` is the site the problem is attributed to (the sender of a bad
    message, the owner of a bad share), or ``None`` when no single site is.
    """

    def __init__(self, message: str, *, site: str | None = None) -> None:
        self.site = site
        super().__init__(message)


class EncodingError(SecAggError):
    """A value cannot be carried exactly in the ring, so it is refused before masking."""


class ConfigError(SecAggError):
    """Session parameters are unusable or weaker than this library allows."""


class TooFewSitesError(SecAggError):
    """Fewer sites than the threshold take part, so nothing may be released."""


class AuthenticationError(SecAggError):
    """A party or key is not the one pinned in the consortium registry."""


class UnknownSiteError(AuthenticationError):
    """A site id that is not in the consortium registry (or not in the session's roster)."""


class KeyMismatchError(AuthenticationError):
    """A key differs from the registered or previously advertised one."""


class BadSignatureError(AuthenticationError):
    """A signature does not verify under the registered key of its claimed signer."""


class MalformedMessageError(SecAggError):
    """Bytes that are not the canonical encoding of a protocol message."""


class WrongSessionError(SecAggError):
    """A message bound to another session."""


class ReplayError(SecAggError):
    """A session id or a message seen before."""


class OutOfOrderError(SecAggError):
    """A message for another round or step than the one in progress."""


class TamperedCiphertextError(SecAggError):
    """An encrypted share failed AES-GCM authentication."""


class TamperedShareError(SecAggError):
    """Revealed Shamir shares do not reconstruct the committed secret."""


class InconsistentSurvivorsError(SecAggError):
    """Survivor sets that contradict what this party saw or signed."""


class DroppedSiteError(SecAggError):
    """A site declared dropped (or left out) earlier in the session reappears."""


class DoubleRevealError(SecAggError):
    """A request that would reveal both secrets protecting one site's input in one round."""


class SessionAbortedError(SecAggError):
    """The session was aborted earlier; nothing more is computed or released.

    ``cause`` is the refusal that aborted it. The in-process driver also
    attaches ``site_errors`` (site -> the error that made it abort) and
    ``sums`` (rounds released before the abort).
    """

    def __init__(
        self, message: str, *, cause: SecAggError | None = None, site: str | None = None
    ) -> None:
        self.cause = cause
        self.site_errors: dict[str, SecAggError] = {}
        self.sums: tuple[object, ...] = ()
        super().__init__(message, site=site)
