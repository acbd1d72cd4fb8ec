# One image for every Flowscope process (migrate, tap, web, demo); docker-compose.yml runs it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# the run-time pins only: the test and lint tools and make run's embedded servers are in
# requirements-dev.lock, which the image never installs (.dockerignore leaves it out)
COPY requirements.lock .
RUN pip install --no-cache-dir -r requirements.lock
# the tap's hot loop in C (eventbus/_scan.c): built before the rest is copied (a code change
# does not reinstall the compiler), then the compiler is dropped again
COPY pyproject.toml setup.py ./
COPY eventbus/_scan.c eventbus/
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && (python -c 'import setuptools' 2>/dev/null || pip install --no-cache-dir setuptools) \
    && python setup.py --quiet build_ext --inplace && rm -rf build \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
COPY . .
RUN DATABASE_URL=postgresql://build@localhost/build DJANGO_DEBUG=0 DJANGO_SECRET_KEY=build-only \
    python manage.py collectstatic --noinput
RUN useradd --system flowscope && chown -R flowscope /app
USER flowscope
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "dashboard.asgi:application"]
