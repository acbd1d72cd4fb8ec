"""Create the first `admin` user (and the role groups) if there is none yet.

The password comes from FLOWSCOPE_ADMIN_PASSWORD, or is generated and printed once.
"""

import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from dashboard.roles import ROLES


class Command(BaseCommand):
    help = "Create the admin user and role groups on first start."

    def handle(self, *args: object, **options: object) -> None:
        for role in ROLES:
            Group.objects.get_or_create(name=role)
        User = get_user_model()
        if User.objects.filter(username="admin").exists():
            return
        given = os.environ.get("FLOWSCOPE_ADMIN_PASSWORD", "")
        password = given or secrets.token_urlsafe(12)
        user = User.objects.create_superuser("admin", email="", password=password)
        user.groups.add(Group.objects.get(name="admin"))
        if given:
            self.stdout.write("Created user 'admin' (password from FLOWSCOPE_ADMIN_PASSWORD).")
        else:
            banner = "=" * 64
            self.stdout.write(
                f"\n{banner}\n  Created user 'admin' with password: {password}\n"
                f"  It is shown only this once.\n{banner}\n"
            )
