"""Demo microservices: an order saga over JetStream, run by `python manage.py demo`.

Five services (orders, inventory, payments, shipping, notifications) talk only through events.
Each consumer is a durable pull consumer run by `worker.Worker` (bounded concurrency, processed-
message record, retries, poison handling, graceful drain); `services` holds what each service
does with an event; `topology` the streams and consumers; `breaker` the circuit breaker around
the flaky carrier; `tracing` the W3C trace context carried in headers.
"""
