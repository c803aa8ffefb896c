"""Protocol constants, named as in the WireGuard paper (§5.4 and §6) and the reference implementations."""

from typing import Final

CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"

KEY_LEN: Final = 32

REKEY_AFTER_MESSAGES: Final = 1 << 60
# The paper's and wireguard-go's value; current Linux uses 2**64 - 8128 - 2. Either interoperates.
REJECT_AFTER_MESSAGES: Final = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
REKEY_TIMEOUT_JITTER_MAX: Final = 1.0 / 3.0
KEEPALIVE_TIMEOUT: Final = 10.0
COOKIE_REFRESH_TIME: Final = 120.0
# Reference behaviour: a peer may not start a new handshake with us more often than this.
INITIATIONS_PER_SECOND: Final = 50
HANDSHAKE_INITIATION_RATE: Final = 1.0 / INITIATIONS_PER_SECOND

# Replay window: 8192 bits, of which one 64-bit word is kept free for the sliding block (wireguard-go, Linux).
COUNTER_BITS_TOTAL: Final = 8192
COUNTER_REDUNDANT_BITS: Final = 64
COUNTER_WINDOW_SIZE: Final = COUNTER_BITS_TOTAL - COUNTER_REDUNDANT_BITS

# Handshakes under load (reference behaviour): per-source token bucket of 20/s with a burst of 5.
PACKETS_PER_SECOND: Final = 20
PACKETS_BURSTABLE: Final = 5
# The responder counts itself under load while its queue of handshakes is more than 1/8 full, and for this long
# after.
UNDER_LOAD_AFTER_TIME: Final = 1.0
MAX_QUEUED_HANDSHAKES: Final = 4096

# Packets staged per peer while waiting for a handshake (wireguard-go: 1024, Linux: 128). Newest kept.
MAX_STAGED_PACKETS: Final = 1024

MESSAGE_PADDING_MULTIPLE: Final = 16
DEFAULT_MTU: Final = 1420
DEFAULT_PORT: Final = 51820
