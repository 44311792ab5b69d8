// The browser's half of the WebAuthn ceremonies (gateway/endpoints/webauthn.py).
//
// Every element with data-webauthn="register|authenticate|passkey" holds a button and a form
// (with the page's CSRF token). A click fetches the ceremony's options from the gateway, asks
// the browser for a credential, puts the answer in the form's "credential" field and submits
// the form, so the gateway answers with a page or a redirect as it does for a code. Without
// WebAuthn in the browser the elements stay hidden and the page works as it is.
(function () {
  "use strict";

  function toBytes(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    b64 += "===".slice((b64.length + 3) % 4);
    var raw = atob(b64);
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer);
    var raw = "";
    for (var i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (d) {
      return { type: d.type, id: toBytes(d.id), transports: d.transports };
    });
  }

  function creationOptions(json) {
    var o = Object.assign({}, json);
    o.challenge = toBytes(json.challenge);
    o.user = Object.assign({}, json.user, { id: toBytes(json.user.id) });
    o.excludeCredentials = descriptors(json.excludeCredentials);
    return o;
  }

  function requestOptions(json) {
    var o = Object.assign({}, json);
    o.challenge = toBytes(json.challenge);
    o.allowCredentials = descriptors(json.allowCredentials);
    return o;
  }

  function answer(credential) {
    var r = credential.response;
    var out = {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: { clientDataJSON: toText(r.clientDataJSON) },
    };
    if (credential.authenticatorAttachment) {
      out.authenticatorAttachment = credential.authenticatorAttachment;
    }
    if (r.attestationObject) {
      out.response.attestationObject = toText(r.attestationObject);
      out.response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      out.response.authenticatorData = toText(r.authenticatorData);
      out.response.signature = toText(r.signature);
      if (r.userHandle) out.response.userHandle = toText(r.userHandle);
    }
    return out;
  }

  function start(box) {
    var kind = box.getAttribute("data-webauthn");
    var button = box.querySelector("[data-webauthn-button]");
    var error = box.querySelector("[data-webauthn-error]");
    var form = box.querySelector("form");
    var prefix = box.getAttribute("data-prefix");

    function fail(text) {
      error.textContent = text;
      error.hidden = false;
      button.disabled = false;
    }

    button.addEventListener("click", function () {
      button.disabled = true;
      error.hidden = true;
      fetch(prefix + "/mfa/webauthn/" + kind + "/options", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: "{}",
      })
        .then(function (response) {
          return response.json().then(function (doc) {
            if (!response.ok) throw new Error(doc.detail || "The request was refused.");
            return doc;
          });
        })
        .then(function (options) {
          if (kind === "register") {
            return navigator.credentials.create({ publicKey: creationOptions(options) });
          }
          return navigator.credentials.get({ publicKey: requestOptions(options) });
        })
        .then(function (credential) {
          if (!credential) throw new Error("No key answered.");
          form.elements.credential.value = JSON.stringify(answer(credential));
          form.submit();
        })
        .catch(function (exc) {
          if (exc && exc.name === "NotAllowedError") {
            fail("The request was cancelled or timed out. Try again.");
          } else if (exc && exc.name === "InvalidStateError") {
            fail("This key is registered already.");
          } else {
            fail((exc && exc.message) || "Something went wrong. Try again.");
          }
        });
    });
    box.hidden = false;
  }

  if (window.PublicKeyCredential && navigator.credentials) {
    document.querySelectorAll("[data-webauthn]").forEach(start);
  }
})();
