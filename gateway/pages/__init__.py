"""The gateway's own pages: sign-in form, message pages, their stylesheet, and the one script
(webauthn.js: the WebAuthn calls; every page works without it but for those)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from functools import cache
from importlib import resources
from string import Template

TITLES = {
    400: "Bad request",
    401: "Sign in required",
    403: "Access denied",
    404: "Not found",
    405: "Method not allowed",
    429: "Too many attempts",
    502: "Upstream unavailable",
    503: "Service unavailable",
    504: "Upstream timed out",
}


@cache
def _template(name: str) -> Template:
    return Template(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))


@cache
def stylesheet() -> bytes:
    """The CSS every page links to."""
    return resources.files(__package__).joinpath("gateway.css").read_bytes()


@cache
def script() -> bytes:
    """The WebAuthn calls the factor, account and sign-in pages make (their only script)."""
    return resources.files(__package__).joinpath("webauthn.js").read_bytes()


def webauthn_box(
    *,
    kind: str,
    prefix: str,
    button: str,
    fields: dict[str, str],
    name_field: bool = False,
) -> str:
    """A security-key button for webauthn.js (`kind`: register, authenticate or passkey) and
    the form it submits the browser's answer with, to {prefix}/mfa/webauthn/{kind}; hidden
    until the script finds WebAuthn."""
    action = f"{prefix}/mfa/webauthn/{kind}"
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    name = (
        '<label for="key-name">Name it (optional)</label>'
        '<input id="key-name" name="name" type="text" maxlength="60" placeholder="Security key">'
        if name_field
        else ""
    )
    return (
        f'<div class="webauthn" data-webauthn="{html.escape(kind)}" '
        f'data-prefix="{html.escape(prefix)}" hidden>'
        f'<form method="post" action="{html.escape(action)}">{hidden}'
        f'<input type="hidden" name="credential" value="">{name}'
        '<button type="button" class="secondary" data-webauthn-button>'
        f"{html.escape(button)}</button></form>"
        '<p class="error" role="alert" data-webauthn-error hidden></p></div>'
    )


def render_login(
    *,
    prefix: str,
    site: str,
    csrf: str,
    next_target: str,
    username: str = "",
    error: str = "",
    password_form: bool = True,
    providers: Sequence[tuple[str, str]] = (),
    passkey: bool = False,
) -> str:
    """The sign-in page: the password form (unless off), "Sign in with a passkey" (`passkey`)
    and a button per OpenID provider (`(href, title)`, the href with `next` in it already);
    every value is escaped here."""
    error_html = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    form = ""
    if password_form:
        form = _template("login_form.html").substitute(
            prefix=html.escape(prefix),
            csrf=html.escape(csrf),
            next=html.escape(next_target),
            username=html.escape(username),
        )
    buttons = ""
    if passkey:
        buttons = webauthn_box(
            kind="passkey",
            prefix=prefix,
            button="Sign in with a passkey",
            fields={"csrf": csrf, "next": next_target},
        )
    if providers:
        links = "\n".join(
            f'    <a class="button provider" href="{html.escape(href)}">{html.escape(title)}</a>'
            for href, title in providers
        )
        buttons += f'<nav class="providers" aria-label="Sign in with">\n{links}\n  </nav>'
    if buttons and password_form:
        buttons = '<p class="or"><span>or</span></p>\n  ' + buttons
    scripts = f'<script src="{html.escape(prefix)}/static/webauthn.js" defer></script>'
    return _template("login.html").substitute(
        prefix=html.escape(prefix),
        site=html.escape(site),
        error=error_html,
        form=form,
        providers=buttons,
        scripts=scripts if passkey else "",
    )


def render_message(
    *, prefix: str, title: str, detail: str, link: tuple[str, str] | None = None
) -> str:
    """A small page with a title, a sentence and an optional button link."""
    action = ""
    if link is not None:
        href, text = link
        action = f'<a class="button" href="{html.escape(href)}">{html.escape(text)}</a>'
    return _template("message.html").substitute(
        prefix=html.escape(prefix),
        title=html.escape(title),
        detail=html.escape(detail),
        action=action,
    )


def render_error_page(status: int, detail: str, prefix: str = "/.auth") -> str:
    """The HTML form of a gateway error, for browser navigations."""
    return render_message(prefix=prefix, title=TITLES.get(status, "Error"), detail=detail)


def render_card(
    *, prefix: str, title: str, body: str, scripts: Sequence[str] = (), wide: bool = False
) -> str:
    """A page in the sign-in card's look; `body` is HTML the caller escaped already, each of
    `scripts` a same-origin script path (the WebAuthn calls); `wide`: the account page's
    wider card, from the top of the page."""
    tags = "\n".join(f'<script src="{html.escape(src)}" defer></script>' for src in scripts)
    return _template("card.html").substitute(
        prefix=html.escape(prefix),
        title=html.escape(title),
        body=body,
        scripts=tags,
        body_class=' class="account-page"' if wide else "",
        classes="card account" if wide else "card",
    )


def render_account(
    *, prefix: str, title: str, body: str, wide: bool = True, scripts: Sequence[str] = ()
) -> str:
    """The account page (or one of its sub-pages): a card page, wider by default; no script
    but the WebAuthn calls'."""
    return render_card(prefix=prefix, title=title, body=body, wide=wide, scripts=scripts)
