-- Plain GET that asks the server to close the connection after its answer: wrk then opens a new
-- connection (and, over TLS, does a full handshake) for every request.
wrk.headers["Connection"] = "close"
