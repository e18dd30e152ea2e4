"""The job with the standard library's smtplib (blocking)."""

import smtplib
import ssl

from buildbot_job import arguments, build_message


def send(message, host, port, ca_file, user, password):
    context = ssl.create_default_context(cafile=ca_file)
    with smtplib.SMTP(host, port) as smtp:
        smtp.starttls(context=context)
        smtp.login(user, password)
        return smtp.send_message(message)


if __name__ == "__main__":
    print("refused:", send(build_message(), *arguments()))
