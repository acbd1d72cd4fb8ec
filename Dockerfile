# One image for every Flowscope process (migrate, tap, web, demo); docker-compose.yml runs it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.lock .
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
RUN DATABASE_URL=postgresql://build@localhost/build DJANGO_DEBUG=0 DJANGO_SECRET_KEY=build-only \
    python manage.py collectstatic --noinput
RUN useradd --system flowscope && chown -R flowscope /app
USER flowscope
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "dashboard.asgi:application"]
