"""Starting the container's resources in order: the one way the server and the CLI both use."""

from __future__ import annotations

from container.containers import Container


async def start_resources(container: Container) -> None:
    """Migrations first, as a plain coroutine: the first contact with the database is the step
    that can hang, and a stop then must cancel cleanly (dependency-injector's resource start
    cannot be cancelled halfway without noise). Then the event and audit logs."""
    database = await container.database()
    if container.settings().database.migrate_on_start:
        await database.migrate()
    await container.init_resources()
