// Verify a Portcullis identity assertion with Go's standard library only.
//
//	go run verify.go JWKS_URL AUDIENCE ISSUER ASSERTION
//
// Prints the verified claims as JSON and exits 0, or prints why it was refused and exits 1.
package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"strings"
	"time"
)

type jwk struct {
	Kty, Crv, X, Y, Kid, Alg string
}

func verify(assertion, jwksURL, audience, issuer string) (map[string]any, error) {
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a compact JWS")
	}
	var header struct{ Alg, Kid string }
	if err := decode(parts[0], &header); err != nil {
		return nil, err
	}
	// Fetch the JWKS (cache it in a real application, honouring Cache-Control).
	resp, err := http.Get(jwksURL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var set struct{ Keys []jwk }
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		return nil, err
	}
	var key *jwk
	for i := range set.Keys {
		if set.Keys[i].Kid == header.Kid {
			key = &set.Keys[i]
		}
	}
	if key == nil {
		return nil, fmt.Errorf("no key %q in the JWKS", header.Kid)
	}
	// The algorithm comes from the key, never from the token alone.
	if header.Alg != key.Alg {
		return nil, fmt.Errorf("algorithm %q is not the key's", header.Alg)
	}
	signed := []byte(parts[0] + "." + parts[1])
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, err
	}
	switch {
	case key.Alg == "ES256" && key.Kty == "EC" && key.Crv == "P-256" && len(sig) == 64:
		x, errX := base64.RawURLEncoding.DecodeString(key.X)
		y, errY := base64.RawURLEncoding.DecodeString(key.Y)
		if errX != nil || errY != nil {
			return nil, errors.New("bad EC key")
		}
		pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
		digest := sha256.Sum256(signed)
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(pub, digest[:], r, s) {
			return nil, errors.New("bad signature")
		}
	case key.Alg == "EdDSA" && key.Kty == "OKP" && key.Crv == "Ed25519":
		x, err := base64.RawURLEncoding.DecodeString(key.X)
		if err != nil || len(x) != ed25519.PublicKeySize || !ed25519.Verify(x, signed, sig) {
			return nil, errors.New("bad signature")
		}
	default:
		return nil, fmt.Errorf("unsupported key %s/%s", key.Kty, key.Alg)
	}
	var claims map[string]any
	if err := decode(parts[1], &claims); err != nil {
		return nil, err
	}
	now := float64(time.Now().Unix())
	if exp, ok := claims["exp"].(float64); !ok || now >= exp {
		return nil, errors.New("expired")
	}
	if claims["iss"] != issuer {
		return nil, errors.New("wrong issuer")
	}
	if claims["aud"] != audience {
		return nil, errors.New("wrong audience")
	}
	return claims, nil
}

func decode(part string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: verify JWKS_URL AUDIENCE ISSUER ASSERTION")
		os.Exit(2)
	}
	claims, err := verify(os.Args[4], os.Args[1], os.Args[2], os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "refused:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(claims)
	fmt.Println(string(out))
}
