// The authorization server of the downstream OAuth tests: panva's certified OpenID provider
// (oidc-provider, pinned in ops/install-test-servers.sh, resolved from tests/.servers/node_modules),
// configured here, not written here. It issues JWT access tokens for a resource (RFC 8707: the
// token's audience is the resource the client names) by the client credentials grant, the
// authorization code grant with PKCE (its development login and consent pages) and the device
// flow, with refresh tokens, revocation (RFC 7009), RFC 8414 and OpenID discovery and the RFC 9207
// `iss` authorization response parameter.
//
//   node tests/servers/oidc_provider.mjs PORT CONFIG.json
//
// CONFIG: {"clients": [oidc-provider client metadata...], "access_token_ttl": seconds,
//          "exchange": {"subject_audience": "the gateway's resource"}}
//
// One grant is ours, not the provider's: RFC 8693 token exchange, added with the provider's
// `registerGrantType`. Its policy is this script's and deliberately small: the subject token must
// be an access token this server signed, unexpired, whose audience is `exchange.subject_audience`
// (the gateway); the new token is for the requested `resource`, names the subject token's `sub`
// as its subject and the exchanging client as the actor (`act`), and carries at most the scopes
// the exchanging client may have.
//
// Each issued token is printed to stdout as one JSON line {"issued": grant, "client": id} so tests
// can count them. "listening" is printed once the port is open.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const require = createRequire(new URL("../.servers/package.json", import.meta.url));
const { default: Provider, errors } = await import(pathToFileURL(require.resolve("oidc-provider")).href);
const jose = await import(pathToFileURL(require.resolve("jose")).href);

const port = Number(process.argv[2]);
const config = JSON.parse(readFileSync(process.argv[3], "utf8"));
const issuer = `http://127.0.0.1:${port}`;
const ttl = config.access_token_ttl ?? 300;
const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";

const { privateKey } = await jose.generateKeyPair("RS256", { extractable: true });
const signing = { ...(await jose.exportJWK(privateKey)), kid: "test-key", use: "sig", alg: "RS256" };
const { d, p, q, dp, dq, qi, ...publicJwk } = signing;
const ownKeys = jose.createLocalJWKSet({ keys: [publicJwk] });

// Exchanged tokens and whom they act for: {sub, act}, read when the token is signed.
const exchanged = new WeakMap();

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: { keys: [signing] },
  scopes: ["openid", "offline_access", "mcp", "admin"],
  pkce: { required: () => true },
  ttl: { AccessToken: ttl, ClientCredentials: ttl, RefreshToken: 86400, DeviceCode: 600, Grant: 86400 },
  features: {
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    devInteractions: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => (oneOf ? oneOf[0] : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: "mcp admin",
        audience: resource,
        accessTokenFormat: "jwt",
        accessTokenTTL: ttl,
      }),
    },
  },
  // Refresh tokens for every client allowed the grant, with or without offline_access.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed("refresh_token"),
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  formats: {
    customizers: {
      // An exchanged token names the subject it acts for, not the exchanging client.
      jwt: async (ctx, token, jwt) => {
        const exchange = exchanged.get(token);
        if (exchange) {
          Object.assign(jwt.payload, exchange);
        }
      },
    },
  },
});

provider.registerGrantType(
  EXCHANGE,
  async (ctx) => {
    const { client, params } = ctx.oidc;
    if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest("subject_token_type must be an access token");
    }
    let subject;
    try {
      ({ payload: subject } = await jose.jwtVerify(params.subject_token, ownKeys, {
        issuer,
        audience: config.exchange?.subject_audience,
      }));
    } catch (error) {
      throw new errors.InvalidGrant(`subject_token is not valid here (${error.code ?? error.name})`);
    }
    const resource = params.resource;
    if (!resource) {
      throw new errors.InvalidTarget("resource is required");
    }
    const allowed = new Set((client.scope ?? "").split(" "));
    const scope = (params.scope ?? "mcp").split(" ").filter((s) => allowed.has(s)).join(" ");
    const token = new provider.ClientCredentials({ client, scope: scope || undefined });
    exchanged.set(token, { sub: subject.sub, act: { sub: client.clientId } });
    token.resourceServer = new provider.ResourceServer(resource, {
      scope: "mcp admin",
      audience: resource,
      accessTokenFormat: "jwt",
      accessTokenTTL: ttl,
    });
    const value = await token.save();
    console.log(JSON.stringify({ issued: "token-exchange", client: client.clientId }));
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: "Bearer",
      expires_in: token.expiration,
      scope: token.scope,
    };
  },
  ["subject_token", "subject_token_type", "resource", "audience", "scope", "requested_token_type"],
  ["resource"],
);

provider.on("grant.success", (ctx) => {
  const grant = ctx.oidc.params?.grant_type;
  if (grant !== EXCHANGE) {
    console.log(JSON.stringify({ issued: grant, client: ctx.oidc.client?.clientId }));
  }
});

provider.listen(port, "127.0.0.1", () => console.log("listening"));
