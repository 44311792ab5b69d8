// A real OpenID Provider for the gateway's OpenID Connect tests: panva's oidc-provider (OpenID
// Certified) with the settings tests/oidc_server.py writes. Not for anything but tests.
//
//   node provider.js SETTINGS.json
//
// SETTINGS (all written by the Python fixture):
//   port, admin_port   0 picks a free port (the first start); later starts pass the same ports
//   ready_file         written (atomically) once both ports listen: {issuer, port, admin_port, pid}
//   cookie_keys        keys that sign the provider's cookies (kept across rebuilds and restarts)
//   jwks               {keys: [private JWKs]}: for each key type the first one signs
//   clients            client metadata, as oidc-provider takes it
//   accounts           {sub: {password, claims, disabled}}
//   switches           consent ("auto" | "page"), claims_in_id_token, refresh_tokens
//                      ("always" | "offline_access"), rotate_refresh_tokens, strict_client_auth,
//                      ttl {IdToken: seconds, ...}
//
// The issuer port serves oidc-provider itself plus the interaction pages (/interaction/UID): a
// plain login form (login = sub or preferred_username, and the account's password) and, with
// consent "page", a consent form; with consent "auto" the consent interaction grants what the
// client asked for without showing a page. Token requests pass through one check first: with
// strict_client_auth a client must authenticate with the method it registered (oidc-provider
// itself takes client_secret_basic and client_secret_post for each other).
//
// The admin port (127.0.0.1 only, JSON) changes the provider while it runs:
//   GET  /state                    issuer, kids, clients, accounts, switches, down
//   POST /keys {jwk, keep_old}     a new signing key first in the JWKS (a new kid)
//   PUT  /clients/ID {metadata}    add or replace a client;  DELETE /clients/ID
//   PUT  /accounts/SUB {...}       add or replace an account (no rebuild needed)
//   POST /accounts/SUB/disable     findAccount stops finding it: sign-in, code exchange,
//                                  refresh and userinfo are refused for it
//   POST /accounts/SUB/enable      until it is enabled again
//   POST /switches {...}           change switches
//   POST /id-token-override {...}  rewrite the next ID token the token endpoint returns
//   POST /backchannel-logout {client_id, sub, sid}   send a logout token now
//   GET  /events?since=N           token requests (with the client auth method used),
//                                  grant, backchannel and end_session events, numbered
//   POST /down, POST /up           close the issuer's port (connections refused), open it again
//
// Keys, clients and switches are options oidc-provider takes at construction, so changing them
// builds a new Provider with the same issuer and cookie keys and swaps it in; every build uses
// the one in-memory store below, so sessions, grants, codes and tokens carry over.

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

import * as jose from 'jose';
import { Provider, errors } from 'oidc-provider';
// oidc-provider's in-memory adapter with one store for the whole process (its default store
// belongs to one Provider instance, and a rebuild would lose every session and token); a
// deep import, so it is tied to the version package.json pins
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';
import LRU from 'oidc-provider/lib/helpers/lru.js';

const HOST = '127.0.0.1';
const settings = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

let keys = settings.jwks.keys;
const clients = new Map(settings.clients.map((metadata) => [metadata.client_id, metadata]));
const accounts = new Map(Object.entries(settings.accounts));
const switches = {
  consent: 'auto',
  claims_in_id_token: true,
  refresh_tokens: 'always',
  rotate_refresh_tokens: false,
  strict_client_auth: true,
  ttl: {},
  ...settings.switches,
};
const store = new LRU({ maxSize: 100000 });
const adapter = (model) => new MemoryAdapter(model, store, 15);
const overrides = [];
const events = [];
let issuer;
let provider;
let handler;
let down = false;

// -- pages: no external resources (the defaults load a web font; tests run offline) ---------

const escape = (value) => String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title>
<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}label,input,button{display:block;margin:.4em 0}.error{color:#a00}</style>
</head><body><h1>${escape(title)}</h1>
${body}
</body></html>`;
}

function send(res, status, html) {
  res.statusCode = status;
  res.setHeader('content-type', 'text/html; charset=utf-8');
  res.setHeader('cache-control', 'no-store');
  res.end(html);
}

function loginPage(uid, client, error, login) {
  return page('Sign in', `<p>to continue to ${escape(client?.clientName || client?.clientId)}</p>
${error ? `<p class="error" id="error">${escape(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${escape(uid)}/login" data-prompt="login">
<label>Username <input name="login" value="${escape(login)}" autofocus autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form>
<p><a href="/interaction/${escape(uid)}/abort">Cancel</a></p>`);
}

function consentPage(uid, client, details) {
  const scopes = details.missingOIDCScope || [];
  return page('Authorize', `<p>${escape(client?.clientName || client?.clientId)} asks for: ${escape(scopes.join(' '))}</p>
<form id="consent" method="post" action="/interaction/${escape(uid)}/confirm" data-prompt="consent">
<button type="submit">Allow</button>
</form>
<p><a href="/interaction/${escape(uid)}/abort">Deny</a></p>`);
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Error', Object.entries(out)
    .map(([key, value]) => `<p><strong>${escape(key)}</strong>: <span id="${escape(key)}">${escape(value)}</span></p>`)
    .join('\n'));
}

async function logoutSource(ctx, form) {
  ctx.body = page('Sign out', `${form}
<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<p id="signed-out">You are signed out.</p>');
}

// -- accounts -------------------------------------------------------------------------------

async function findAccount(_ctx, sub) {
  const account = accounts.get(sub);
  if (!account || account.disabled) {
    return undefined;
  }
  return {
    accountId: sub,
    async claims() {
      return { ...account.claims, sub };
    },
  };
}

function accountByLogin(login) {
  if (accounts.has(login)) {
    return [login, accounts.get(login)];
  }
  for (const [sub, account] of accounts) {
    if (account.claims.preferred_username === login) {
      return [sub, account];
    }
  }
  return [undefined, undefined];
}

// -- the provider ---------------------------------------------------------------------------

// oidc-provider's fetches (back-channel logout tokens) refuse loopback addresses, as SSRF
// protection; here the relying parties are all on 127.0.0.1, and nothing else is reached
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
function loopbackFetch(url, { dispatcher: _ssrfGuard, ...options }) {
  if (!LOOPBACK.has(new URL(url).hostname)) {
    return Promise.reject(new Error(`only loopback URLs are fetched here, not ${url}`));
  }
  return globalThis.fetch(url, options);
}

function record(type, fields) {
  const event = { n: events.length + 1, type, at: Date.now() / 1000, ...fields };
  events.push(event);
  return event;
}

function build() {
  const next = new Provider(issuer, {
    adapter,
    clients: [...clients.values()],
    jwks: { keys },
    cookies: { keys: settings.cookie_keys },
    findAccount,
    claims: {
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', 'given_name', 'family_name'],
      groups: ['groups'],
    },
    features: {
      devInteractions: { enabled: false },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
      revocation: { enabled: true },
      userinfo: { enabled: true },
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    responseTypes: ['code'],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    pkce: { required: () => true },
    conformIdTokenClaims: !switches.claims_in_id_token,
    async issueRefreshToken(_ctx, client, code) {
      return client.grantTypeAllowed('refresh_token')
        && (switches.refresh_tokens === 'always' || code.scopes.has('offline_access'));
    },
    rotateRefreshToken: Boolean(switches.rotate_refresh_tokens),
    ttl: { Interaction: 3600, Session: 14 * 24 * 3600, Grant: 14 * 24 * 3600, ...switches.ttl },
    renderError,
    fetch: loopbackFetch,
  });

  next.on('backchannel.success', (_ctx, client, sub, sid) => record('backchannel.success', { client_id: client.clientId, sub, sid }));
  next.on('backchannel.error', (_ctx, err, client, sub, sid) => record('backchannel.error', {
    client_id: client.clientId, sub, sid, error: String(err?.message || err),
  }));
  next.on('end_session.success', (ctx) => record('end_session.success', { client_id: ctx.oidc.client?.clientId }));
  next.on('grant.success', (ctx) => record('grant.success', {
    client_id: ctx.oidc.client?.clientId, grant_type: ctx.oidc.params?.grant_type,
  }));
  next.on('grant.error', (ctx, err) => record('grant.error', {
    client_id: ctx.oidc.client?.clientId, grant_type: ctx.oidc.params?.grant_type,
    error: err.error || err.message, error_description: err.error_description,
  }));
  next.on('server_error', (_ctx, err) => console.error('oidc-provider server_error', err));

  // the token endpoint's ID token, rewritten once per queued override
  next.use(async (ctx, nextMiddleware) => {
    await nextMiddleware();
    if (ctx.oidc?.route !== 'token' || ctx.status !== 200 || !ctx.body?.id_token) return;
    const at = overrides.findIndex((o) => !o.client_id || o.client_id === ctx.oidc.client?.clientId);
    if (at === -1) return;
    const [override] = overrides.splice(at, 1);
    ctx.body = { ...ctx.body, id_token: await rewrite(ctx.body.id_token, override) };
    record('id_token.override', { client_id: ctx.oidc.client?.clientId });
  });
  return next;
}

// check every client now: oidc-provider validates static clients on their first use
async function rebuild() {
  const next = build();
  for (const id of clients.keys()) {
    await next.Client.find(id);
  }
  provider = next;
  handler = next.callback();
}

function patch(object, changes) {
  const out = { ...object };
  for (const [key, value] of Object.entries(changes || {})) {
    if (value === null) delete out[key];
    else out[key] = value;
  }
  return out;
}

// {claims, header, key}: null removes a claim or header; alg "none" leaves it unsigned; key (a
// private JWK) signs instead of the provider's key the token names
async function rewrite(token, { claims, header, key }) {
  const [encodedHeader, encodedPayload] = token.split('.');
  const decode = (part) => JSON.parse(Buffer.from(part, 'base64url').toString());
  const payload = patch(decode(encodedPayload), claims);
  const protectedHeader = patch(decode(encodedHeader), header);
  const body = Buffer.from(JSON.stringify(payload));
  if (protectedHeader.alg === 'none') {
    delete protectedHeader.kid;
    return `${Buffer.from(JSON.stringify(protectedHeader)).toString('base64url')}.${body.toString('base64url')}.`;
  }
  const jwk = key || keys.find((candidate) => candidate.kid === decode(encodedHeader).kid);
  if (key && !(header && 'kid' in header)) protectedHeader.kid = key.kid;
  return new jose.CompactSign(body)
    .setProtectedHeader(protectedHeader)
    .sign(await jose.importJWK(jwk, protectedHeader.alg));
}

// -- interactions ---------------------------------------------------------------------------

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString());
}

async function grantConsent(req, res, interaction) {
  const { prompt: { details }, params, session: { accountId } } = interaction;
  const grant = interaction.grantId
    ? await provider.Grant.find(interaction.grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  const consent = interaction.grantId ? {} : { grantId };
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

async function interactions(req, res, url) {
  const [, , uid, action] = url.pathname.split('/');
  const interaction = await provider.interactionDetails(req, res);
  if (interaction.uid !== uid) throw new errors.SessionNotFound('interaction session id mismatch');
  const client = await provider.Client.find(interaction.params.client_id);
  const { name } = interaction.prompt;

  if (req.method === 'GET' && action === undefined) {
    if (name === 'login') return send(res, 200, loginPage(uid, client, '', interaction.params.login_hint));
    if (name === 'consent' && switches.consent === 'auto') return grantConsent(req, res, interaction);
    if (name === 'consent') return send(res, 200, consentPage(uid, client, interaction.prompt.details));
  } else if (req.method === 'POST' && action === 'login' && name === 'login') {
    const form = await readForm(req);
    const [sub, account] = accountByLogin(form.get('login') || '');
    let error = '';
    if (!account || account.password !== form.get('password')) error = 'Wrong username or password.';
    else if (account.disabled) error = 'This account is disabled.';
    if (error) return send(res, 200, loginPage(uid, client, error, form.get('login')));
    return provider.interactionFinished(req, res, { login: { accountId: sub, amr: ['pwd'] } }, {
      mergeWithLastSubmission: false,
    });
  } else if (req.method === 'POST' && action === 'confirm' && name === 'consent') {
    return grantConsent(req, res, interaction);
  } else if (req.method === 'GET' && action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  return send(res, 404, page('Not found', `<p>no ${escape(req.method)} ${escape(url.pathname)} for prompt ${escape(name)}</p>`));
}

// oidc-provider takes client_secret_basic and client_secret_post for each other (by design):
// with strict_client_auth a client must use the method it registered, as many providers
// insist. Every token request is recorded with the method it used.
async function tokenRequest(req, res) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  req.body = Buffer.concat(chunks); // oidc-provider reads a body already read from req.body
  const params = new URLSearchParams(req.body.toString());
  const authorization = req.headers.authorization || '';
  let clientId = params.get('client_id');
  let method = params.has('client_secret') ? 'client_secret_post' : 'none';
  if (/^basic /i.test(authorization)) {
    method = 'client_secret_basic';
    const decoded = Buffer.from(authorization.slice(6), 'base64').toString();
    clientId = decodeURIComponent(decoded.slice(0, decoded.indexOf(':')).replace(/\+/g, '%20'));
  }
  const registered = clients.get(clientId)?.token_endpoint_auth_method || 'client_secret_basic';
  record('token.request', { client_id: clientId, auth_method: method, grant_type: params.get('grant_type') });
  if (switches.strict_client_auth && clients.has(clientId) && method !== 'none' && method !== registered) {
    res.statusCode = 401;
    res.setHeader('content-type', 'application/json');
    res.setHeader('cache-control', 'no-store');
    if (method === 'client_secret_basic') res.setHeader('www-authenticate', `Basic realm="${issuer}"`);
    res.end(JSON.stringify({
      error: 'invalid_client',
      error_description: `client authenticated with ${method}, registered for ${registered}`,
    }));
    return;
  }
  handler(req, res);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, issuer || 'http://127.0.0.1');
  const failed = (err) => {
    const status = err.statusCode || err.status || 500;
    if (status >= 500) console.error('request error', err);
    if (res.headersSent) return res.end();
    return send(res, status, page('Error', `<p><strong>${escape(err.error || 'error')}</strong>: <span id="error_description">${escape(err.error_description || err.message)}</span></p>`));
  };
  if (!handler) {
    send(res, 503, page('Starting', '<p>starting</p>'));
  } else if (url.pathname.startsWith('/interaction/')) {
    interactions(req, res, url).catch(failed);
  } else if (req.method === 'POST' && url.pathname === '/token') {
    tokenRequest(req, res).catch(failed);
  } else {
    handler(req, res);
  }
});

// -- the admin API --------------------------------------------------------------------------

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString();
  return text ? JSON.parse(text) : {};
}

function publicKid(jwk) {
  return { kid: jwk.kid, kty: jwk.kty, crv: jwk.crv };
}

function state() {
  return {
    issuer,
    down,
    kids: keys.map(publicKid),
    clients: [...clients.keys()],
    accounts: Object.fromEntries([...accounts].map(([sub, a]) => [sub, { disabled: Boolean(a.disabled) }])),
    switches,
    events: events.length,
  };
}

function listen(target, port) {
  return new Promise((resolve, reject) => {
    target.once('error', reject);
    target.listen(port, HOST, () => {
      target.off('error', reject);
      resolve(target.address().port);
    });
  });
}

async function admin(req, url) {
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const body = ['POST', 'PUT'].includes(req.method) ? await readJson(req) : {};
  const route = `${req.method} /${parts[0] || ''}`;

  switch (route) {
    case 'GET /state':
      return state();
    case 'GET /events': {
      const since = Number(url.searchParams.get('since') || 0);
      return { events: events.filter((e) => e.n > since) };
    }
    case 'POST /keys': {
      const previous = keys;
      keys = [body.jwk, ...(body.keep_old === false ? keys.filter((k) => k.kty !== body.jwk.kty) : keys)];
      try {
        await rebuild();
      } catch (err) {
        keys = previous;
        throw err;
      }
      return state();
    }
    case 'PUT /clients':
    case 'DELETE /clients': {
      const id = parts[1];
      const previous = clients.get(id);
      if (req.method === 'PUT') clients.set(id, { ...body, client_id: id });
      else clients.delete(id);
      try {
        await rebuild();
      } catch (err) {
        if (previous) clients.set(id, previous);
        else clients.delete(id);
        throw err;
      }
      return state();
    }
    case 'PUT /accounts':
      accounts.set(parts[1], { password: body.password, claims: body.claims || {}, disabled: Boolean(body.disabled) });
      return state();
    case 'POST /accounts': {
      const account = accounts.get(parts[1]);
      if (!account || !['disable', 'enable'].includes(parts[2])) return null;
      account.disabled = parts[2] === 'disable';
      return state();
    }
    case 'POST /switches': {
      const previous = { ...switches };
      Object.assign(switches, body);
      try {
        await rebuild();
      } catch (err) {
        Object.assign(switches, previous);
        throw err;
      }
      return state();
    }
    case 'POST /id-token-override':
      overrides.push(body);
      return { queued: overrides.length };
    case 'POST /backchannel-logout': {
      const client = await provider.Client.find(body.client_id);
      if (!client) return null;
      try {
        await client.backchannelLogout(body.sub, body.sid);
        return record('backchannel.success', { client_id: client.clientId, sub: body.sub, sid: body.sid });
      } catch (err) {
        return record('backchannel.error', {
          client_id: client.clientId, sub: body.sub, sid: body.sid, error: String(err?.message || err),
        });
      }
    }
    case 'POST /down':
      if (!down) {
        down = true;
        await new Promise((resolve) => {
          server.close(resolve);
          server.closeAllConnections();
        });
      }
      return state();
    case 'POST /up':
      if (down) {
        await listen(server, settings.port);
        down = false;
      }
      return state();
    default:
      return null;
  }
}

const adminServer = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  admin(req, url).then((out) => {
    res.statusCode = out === null ? 404 : 200;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(out ?? { error: `no ${req.method} ${url.pathname}` }));
  }, (err) => {
    res.statusCode = 400;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ error: err.error || err.name, error_description: err.error_description || err.message }));
  });
});

// -- start ----------------------------------------------------------------------------------

settings.port = await listen(server, settings.port || 0);
issuer = `http://${HOST}:${settings.port}`;
await rebuild();
settings.admin_port = await listen(adminServer, settings.admin_port || 0);

const ready = { issuer, port: settings.port, admin_port: settings.admin_port, pid: process.pid };
const partial = path.join(path.dirname(settings.ready_file), `.${path.basename(settings.ready_file)}.tmp`);
fs.writeFileSync(partial, JSON.stringify(ready));
fs.renameSync(partial, settings.ready_file);
console.log(`oidc provider ${issuer} (admin 127.0.0.1:${settings.admin_port}) ready`);

function shutdown() {
  server.closeAllConnections();
  adminServer.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// the fixture holds our stdin open: when it goes away (even killed), so do we
process.stdin.on('end', shutdown);
process.stdin.on('error', shutdown);
process.stdin.resume();
