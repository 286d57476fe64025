"""Shared machinery of the black-box tests, imported by the test modules
(`from helpers.daemon import ...`); conftest.py wraps it in pytest fixtures.

* `helpers.daemon`: finding the binary, writing a config, the `Sluice`
  launcher (start on picked ports, wait for the listener, stop, read its
  log, run its CLI) and the queue polling the delivery tests share.
* `helpers.smtp`: the one way to talk SMTP to the daemon (`RawSMTP`,
  `send_mail`, `check`, `queued_id`, messages).
* `helpers.sink`: the one capturing next hop (`Sink`, aiosmtpd).
* `helpers.certs`: certificates made with the openssl CLI.
* `helpers.ports`: loopback ports picked by binding port 0.
* `helpers.rules`: rule-file variants generated from config/rules.toml.

Test modules import from here, never from each other.
"""
