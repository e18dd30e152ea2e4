"""The job with aiosmtplib (asyncio)."""

import asyncio
import ssl

import aiosmtplib

from buildbot_job import arguments, build_message


async def send(message, host, port, ca_file, user, password):
    context = ssl.create_default_context(cafile=ca_file)
    return await aiosmtplib.send(
        message, hostname=host, port=port, start_tls=True, tls_context=context, username=user, password=password
    )


if __name__ == "__main__":
    print("refused, reply:", asyncio.run(send(build_message(), *arguments())))
