// Verify a Portcullis identity assertion with jose (npm install jose).
//
//     node verify.mjs JWKS_URL AUDIENCE ISSUER ASSERTION
//
// Prints the verified claims as JSON and exits 0, or prints why it was refused and exits 1.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksUrl, audience, issuer, assertion] = process.argv.slice(2);
// Fetches the JWKS and keeps it (honouring its Cache-Control); picks the key by `kid`.
const jwks = createRemoteJWKSet(new URL(jwksUrl));
try {
  const { payload } = await jwtVerify(assertion, jwks, {
    audience,
    issuer,
    algorithms: ['ES256', 'EdDSA'],
    requiredClaims: ['sub', 'iat', 'exp'],
  });
  console.log(JSON.stringify(payload));
} catch (e) {
  console.error(`refused: ${e.code ?? e.name}: ${e.message}`);
  process.exit(1);
}
