#!/usr/bin/env python3
"""Verify a Portcullis identity assertion with PyJWT (pip install "pyjwt[crypto]").

    python3 verify.py JWKS_URL AUDIENCE ISSUER ASSERTION

Prints the verified claims as JSON and exits 0, or prints why it was refused and exits 1.
"""
import json
import sys

import jwt  # PyJWT; `cryptography` provides ES256 and EdDSA


def verify(assertion: str, jwks_url: str, audience: str, issuer: str) -> dict:
    # Fetches the JWKS (cache the client in a real application) and picks the key by `kid`.
    key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(assertion)
    return jwt.decode(
        assertion,
        key.key,
        algorithms=["ES256", "EdDSA"],  # never take the algorithm from the token alone
        audience=audience,
        issuer=issuer,
        options={"require": ["iss", "sub", "aud", "iat", "exp"]},
    )


if __name__ == "__main__":
    jwks_url, audience, issuer, assertion = sys.argv[1:5]
    try:
        claims = verify(assertion, jwks_url, audience, issuer)
    except jwt.PyJWTError as e:
        print(f"refused: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(claims))
