"""
Log in with an OAuth 2.0 refresh token (Gmail, Microsoft 365) and send one
message.

Usage::

    OAUTH_CLIENT_ID=... OAUTH_CLIENT_SECRET=... OAUTH_REFRESH_TOKEN=... \\
    python docs/examples/login_oauth2.py USER [HOST [PORT [TOKEN_URL]]]

HOST defaults to ``smtp.gmail.com``, PORT to 587 and TOKEN_URL to Google's
token endpoint.  The connection must upgrade with STARTTLS.  The access
token is fetched with the refresh token, and fetched again if the server
refuses it; every new token is reported, which is where an application
would store it.  Exits 0 when the message was accepted, 1 when it was not.
"""

import os
import sys

from twisted.internet import task

from twisted_smtpconn import Auth, Envelope, OAuth2TokenProvider, SMTPConnection, SMTPConnectionError


async def main(reactor, user, host="smtp.gmail.com", port="587", token_url="https://oauth2.googleapis.com/token"):
    tokens = OAuth2TokenProvider(
        user,
        client_id=os.environ["OAUTH_CLIENT_ID"],
        client_secret=os.environ["OAUTH_CLIENT_SECRET"],
        refresh_token=os.environ["OAUTH_REFRESH_TOKEN"],
        token_url=token_url,
        reactor=reactor,
    )
    # Store new tokens here (a database, a keyring); this only reports them.
    tokens.on("token", lambda token: print(f"new access token for {token.user}, expires at {token.expires}"))

    conn = SMTPConnection(host, int(port), require_tls=True, reactor=reactor)
    try:
        await conn.connect()
        await conn.login(Auth(xoauth2=tokens))
        info = await conn.send(Envelope(user, [user]), "Subject: hello\n\nsent with XOAUTH2\n")
        print(f"accepted by {info.accepted}: {info.response}")
    except SMTPConnectionError as error:
        print(f"not sent ({error.code}): {error}", file=sys.stderr)
        raise SystemExit(1)
    finally:
        await conn.quit()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
