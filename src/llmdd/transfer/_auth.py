"""Link authentication: with llmdd.LinkSecret set, both sides of a link prove they hold it before
LINK, so a peer without it learns nothing (docs/security.md).

Challenge and response over a fresh nonce from each side: the linking side sends its nonce
(AUTH_HELLO), the listener its own (AUTH_CHALLENGE), the linking side its MAC over both
(AUTH_PROOF), and only once that checks out the listener its MAC (AUTH_CONFIRM). A MAC is
HMAC-SHA256 keyed with the secret over a domain label, the protocol version, the role of the side
that computes it and the two nonces: neither side's MAC serves as the other's, nor in another
connection. The secret itself never goes on the wire. Every frame carries request id 0, as LINK.
"""
import hashlib
import hmac
import os

from . import _protocol as wire

_DOMAIN = b"llmdd link authentication\0"
LINKING_SIDE, LISTENING_SIDE = b"linking side", b"listening side"


class AuthenticationFailure(wire.ProtocolError):
    """The other side did not prove that it holds the link secret."""


def mac(secret, role, linking_nonce, listening_nonce):
    """The MAC that `role`'s side sends in the authentication of these two nonces."""
    # The role ends at its NUL and the nonces have a fixed size: one message has one reading.
    message = b"".join((_DOMAIN, bytes((wire.PROTOCOL_VERSION,)), role, b"\0", linking_nonce, listening_nonce))
    return hmac.new(secret, message, hashlib.sha256).digest()


def _expect(connection, message_type, deadline):
    received_type, request_id, body = wire.receive(connection, deadline)
    if received_type != message_type or request_id != 0:
        raise AuthenticationFailure(f"{received_type.name} #{request_id} where {message_type.name} #0 was due")
    return body


def authenticate_listening_side(connection, secret, deadline):
    """The linking side's part, before it sends LINK; AuthenticationFailure when the listener
    did not prove it holds `secret` (bytes), socket errors as wire.receive raises them."""
    linking_nonce = os.urandom(wire.NONCE_BYTES)
    wire.send(connection, wire.MessageType.AUTH_HELLO, 0, {"nonce": linking_nonce.hex()}, deadline)
    listening_nonce = bytes.fromhex(_expect(connection, wire.MessageType.AUTH_CHALLENGE, deadline)["nonce"])
    proof = mac(secret, LINKING_SIDE, linking_nonce, listening_nonce)
    wire.send(connection, wire.MessageType.AUTH_PROOF, 0, {"mac": proof.hex()}, deadline)
    answer = bytes.fromhex(_expect(connection, wire.MessageType.AUTH_CONFIRM, deadline)["mac"])
    if not hmac.compare_digest(answer, mac(secret, LISTENING_SIDE, linking_nonce, listening_nonce)):
        raise AuthenticationFailure("the listener's proof of the link secret is wrong")


def authenticate_linking_side(connection, hello, request_id, secret, deadline):
    """The listener's part, given the connection's first frame (an AUTH_HELLO's body and request
    id): whether the linking side proved it holds `secret`. The listener proves back only then;
    on False it must close the connection unanswered."""
    if request_id != 0:
        return False
    linking_nonce = bytes.fromhex(hello["nonce"])
    listening_nonce = os.urandom(wire.NONCE_BYTES)
    wire.send(connection, wire.MessageType.AUTH_CHALLENGE, 0, {"nonce": listening_nonce.hex()}, deadline)
    try:
        proof = bytes.fromhex(_expect(connection, wire.MessageType.AUTH_PROOF, deadline)["mac"])
    except AuthenticationFailure:
        return False
    if not hmac.compare_digest(proof, mac(secret, LINKING_SIDE, linking_nonce, listening_nonce)):
        return False
    answer = mac(secret, LISTENING_SIDE, linking_nonce, listening_nonce)
    wire.send(connection, wire.MessageType.AUTH_CONFIRM, 0, {"mac": answer.hex()}, deadline)
    return True
