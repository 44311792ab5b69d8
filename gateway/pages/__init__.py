"""The gateway's own pages: sign-in form, message pages and their stylesheet (no JavaScript)."""

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
) -> str:
    """The sign-in page: the password form (unless off) and a button per OpenID provider
    (`(href, title)`, the href with `next` in it already); every value is escaped here."""
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
    if providers:
        links = "\n".join(
            f'    <a class="button provider" href="{html.escape(href)}">{html.escape(title)}</a>'
            for href, title in providers
        )
        separator = '<p class="or"><span>or</span></p>\n  ' if password_form else ""
        buttons = f'{separator}<nav class="providers" aria-label="Sign in with">\n{links}\n  </nav>'
    return _template("login.html").substitute(
        prefix=html.escape(prefix),
        site=html.escape(site),
        error=error_html,
        form=form,
        providers=buttons,
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


def render_account(*, prefix: str, title: str, body: str, wide: bool = True) -> str:
    """The account page (or one of its sub-pages): a card page, wider by default. No script."""
    return render_card(prefix=prefix, title=title, body=body, wide=wide)
