package dev.ferry.tests

import dev.ferry.*
import dev.ferry.tests.Fixtures.client
import dev.ferry.tests.Fixtures.openTasks
import kotlinx.coroutines.runBlocking
import org.junit.Assert.*
import org.junit.Test
import java.util.concurrent.CopyOnWriteArrayList

/** Against the real ferry-server started by scripts/test-kotlin-e2e.sh (dev config). */
class SyncTest {
    private fun create(id: String, title: String, extra: String = "") =
        """{"op":"create","collection":"tasks","fields":{"id":"$id","title":"$title"$extra}}"""

    private fun uid(p: String) = "$p-${System.nanoTime()}"

    @Test
    fun eachWriteModeReachesTheServerAsDesigned() = runBlocking<Unit> {
        openTasks("modes").use { db ->
            client(db).use { c ->
                val (a, b, o) = listOf(uid("of"), uid("opt"), uid("on"))
                // offline_first: stored locally and queued.
                c.write("[${create(a, "offline first")}]", WriteMode.OfflineFirst)
                assertTrue(db.get("tasks", a)!!.contains("\"_status\":\"pending\""))
                assertTrue(db.outbox().contains(a))
                // optimistic: stored, then pushed at once: synced, never queued.
                c.write("[${create(b, "optimistic")}]", WriteMode.Optimistic)
                assertTrue(db.get("tasks", b)!!.contains("\"_status\":\"synced\""))
                assertFalse(db.outbox().contains(b))
                // online: the server first; stored as synced.
                val rows = c.write("[${create(o, "online")}]", WriteMode.Online(OfflineBehavior.FAIL))
                assertTrue(rows, rows.contains("\"_version\":1"))
                assertTrue(db.get("tasks", o)!!.contains("\"_status\":\"synced\""))
                assertFalse(db.outbox().contains(o))

                val report = c.sync()
                assertEquals(1uL, report.pushedApplied)
                assertEquals("[]", db.outbox())

                // Offline: online writes fail or queue, as asked; optimistic queues.
                c.setOnline(false)
                val f = uid("fail")
                val e = assertThrows(FerryException.Offline::class.java) {
                    runBlocking { c.write("[${create(f, "x")}]", WriteMode.Online(OfflineBehavior.FAIL)) }
                }
                assertTrue(e.detail, e.detail.startsWith("offline"))
                assertNull(db.get("tasks", f))
                val q = uid("queue")
                c.write("[${create(q, "queued")}]", WriteMode.Online(OfflineBehavior.QUEUE))
                val p = uid("optoff")
                c.write("[${create(p, "queued")}]", WriteMode.Optimistic)
                assertTrue(db.outbox().contains(q) && db.outbox().contains(p))
                assertThrows(FerryException.Offline::class.java) { runBlocking { c.sync() } }
                assertEquals(SyncPhase.OFFLINE, c.status().phase)
                c.setOnline(true)
                assertEquals(2uL, c.sync().pushedApplied)
            }
        }
    }

    @Test
    fun oneLogoutCallStopsTheClientClosesTheDatabaseAndDeletesIt() = runBlocking<Unit> {
        val path = Fixtures.dbPath("logout")
        val db = FerryDatabase.open(path, Fixtures.TASKS_SCHEMA)
        val c = client(db)
        val id = uid("lo")
        c.write("[${create(id, "before logout")}]", WriteMode.OfflineFirst)
        c.sync()
        assertTrue(java.io.File(path).exists())
        logout(c, db)
        assertFalse("the database file is deleted", java.io.File(path).exists())
        // The app still holds both objects: they answer Closed, not a crash.
        assertThrows(FerryException.Closed::class.java) { db.get("tasks", id) }
        assertThrows(FerryException.Closed::class.java) { runBlocking { c.sync() } }
        logout(null, db) // again: nothing left to do
        c.close()
        db.close()
    }

    @Test
    fun twoDatabasesConvergeThroughTheServer() = runBlocking<Unit> {
        openTasks("alice").use { alice ->
            openTasks("bob").use { bob ->
                // Two devices of one user (the dev config scopes tasks to their owner).
                client(alice).use { ca ->
                    client(bob).use { cb ->
                        val id = uid("shared")
                        val bobEvents = Events()
                        bob.addChangeListener(bobEvents).use {
                            ca.write("[${create(id, "from alice")}]", WriteMode.OfflineFirst)
                            ca.sync()
                            val report = cb.sync()
                            assertTrue(report.toString(), report.pulled >= 1uL)
                            assertTrue(bob.get("tasks", id)!!.contains("from alice"))
                            val ev = bobEvents.await("remote $id") { it.contains("\"source\":\"remote\"") && it.contains(id) }
                            assertTrue(ev, ev.contains("\"_status\":\"synced\""))
                            // And back: bob edits, alice sees it.
                            cb.write("""[{"op":"update","collection":"tasks","id":"$id","fields":{"done":true}}]""", WriteMode.Optimistic)
                            ca.sync()
                            assertTrue(alice.get("tasks", id)!!.contains("\"done\":true"))
                        }
                    }
                }
            }
        }
    }

    @Test
    fun aRejectedRecordRollsBackIsQuarantinedAndDoesNotBlockTheRest() = runBlocking<Unit> {
        openTasks("rollback", Fixtures.TASKS_SCHEMA_LOOSE).use { db ->
            client(db).use { c ->
                val events = Events()
                db.addChangeListener(events).use {
                    val good = uid("good")
                    val bad = uid("bad")
                    c.write("[${create(good, "fine")},${create(bad, "nope", ",\"priority\":\"high\"")}]", WriteMode.OfflineFirst)
                    val report = c.sync()
                    assertEquals(report.toString(), 1uL, report.pushedApplied)
                    assertEquals(report.toString(), 1uL, report.pushedRejected)
                    val rb = events.await("rollback") { it.startsWith("{\"source\":\"rollback\"") }
                    assertTrue(rb, rb.contains("\"deleted\":[\"$bad\"]"))
                    assertNull(db.get("tasks", bad))
                    assertTrue(db.get("tasks", good)!!.contains("\"_status\":\"synced\""))
                    val q = db.quarantine()
                    assertTrue(q, q.contains(bad))
                    assertEquals(1uL, c.status().quarantined)
                    val mutationId = Regex("\"mutation_id\":\"([^\"]+)\"").find(q)!!.groupValues[1]
                    db.discardQuarantined(mutationId)
                    assertEquals("[]", db.quarantine())
                }
                // Optimistic: the rejection rolls back and fails the call.
                val bad2 = uid("bad2")
                val e = assertThrows(FerryException.Rejected::class.java) {
                    runBlocking { c.write("[${create(bad2, "nope", ",\"priority\":\"high\"")}]", WriteMode.Optimistic) }
                }
                assertEquals("invalid_record", e.code)
                assertTrue(e.detail, e.detail.startsWith("rejected by the server"))
                assertNull(db.get("tasks", bad2))
            }
        }
    }

    @Test
    fun statusListenerSeesPhasesAndCancelStopsIt() = runBlocking<Unit> {
        openTasks("status").use { db ->
            client(db).use { c ->
                val phases = CopyOnWriteArrayList<SyncPhase>()
                val handle = c.addStatusListener(object : StatusListener {
                    override fun onStatus(status: SyncStatus) {
                        phases.add(status.phase)
                    }
                })
                c.write("[${create(uid("s"), "x")}]", WriteMode.OfflineFirst)
                c.sync()
                assertTrue(phases.toString(), phases.contains(SyncPhase.PULLING))
                assertTrue(phases.toString(), phases.contains(SyncPhase.PUSHING))
                assertEquals(SyncPhase.IDLE, c.status().phase)
                assertNotNull(c.status().lastSyncCompletedAt)
                handle.cancel()
                // A delivery that was already running when cancel() came may still
                // add its status: wait for the event thread, then count.
                db.flush()
                val n = phases.size
                c.sync()
                db.flush()
                assertEquals(n, phases.size)
            }
        }
    }

    @Test
    fun badTokensAndTokenProviderFailuresAreTypedErrors() = runBlocking<Unit> {
        openTasks("auth").use { db ->
            FerrySyncClient(db, Fixtures.serverUrl(), StaticTokens("wrong"), SyncConfig()).use { c ->
                assertThrows(FerryException.Unauthorized::class.java) { runBlocking { c.sync() } }
                assertTrue(c.status().authFailed)
            }
            val refreshes = java.util.concurrent.atomic.AtomicInteger()
            val refreshing = object : TokenProvider {
                override suspend fun token(refresh: Boolean): String {
                    if (refresh) refreshes.incrementAndGet()
                    return if (refresh) Fixtures.ALICE else "expired"
                }
            }
            FerrySyncClient(db, Fixtures.serverUrl(), refreshing, SyncConfig()).use { c ->
                c.sync()
                assertEquals(1, refreshes.get())
            }
            val throwing = object : TokenProvider {
                override suspend fun token(refresh: Boolean): String = throw IllegalStateException("keychain locked")
            }
            FerrySyncClient(db, Fixtures.serverUrl(), throwing, SyncConfig()).use { c ->
                // Retried with backoff, not a stop: no auth failure.
                val e = assertThrows(FerryException.TokenUnavailable::class.java) { runBlocking { c.sync() } }
                assertTrue(e.message!!, e.message!!.contains("keychain locked"))
                assertFalse(c.status().authFailed)
            }
            val offline = object : TokenProvider {
                override suspend fun token(refresh: Boolean): String = throw HostException.Offline("no network for auth")
            }
            FerrySyncClient(db, Fixtures.serverUrl(), offline, SyncConfig()).use { c ->
                assertThrows(FerryException.Offline::class.java) { runBlocking { c.sync() } }
            }
            // An unreachable server is Offline too.
            FerrySyncClient(db, "http://127.0.0.1:9", StaticTokens(Fixtures.ALICE), SyncConfig()).use { c ->
                assertThrows(FerryException.Offline::class.java) { runBlocking { c.sync() } }
            }
        }
    }

    @Test
    fun backgroundSyncPushesAfterALocalWrite() = runBlocking<Unit> {
        openTasks("background").use { db ->
            client(db).use { c ->
                c.start()
                val id = uid("bg")
                db.put("tasks", """{"id":"$id","title":"background"}""")
                val deadline = System.currentTimeMillis() + 10_000
                while (db.outbox() != "[]" && System.currentTimeMillis() < deadline) Thread.sleep(50)
                assertEquals("[]", db.outbox())
                assertTrue(db.get("tasks", id)!!.contains("\"_status\":\"synced\""))
                c.stop()
            }
        }
    }

    @Test
    fun fetchRemoteReadsTheCallersRowsCachesOnRequestAndSaysOffline() = runBlocking<Unit> {
        val tag = uid("fetch")
        openTasks("fetch-bob").use { db ->
            client(db, Fixtures.BOB).use { c ->
                c.write("[${create("$tag-1", tag)},${create("$tag-2", tag)}]", WriteMode.OfflineFirst)
                c.sync()
            }
        }
        openTasks("fetch-alice").use { db ->
            client(db).use { c ->
                c.write("[${create("$tag-alice", tag)}]", WriteMode.OfflineFirst)
                c.sync()
            }
        }
        val query = """{"where":{"column":"title","op":"eq","value":"$tag"},"sort":[{"column":"id","desc":true}]}"""
        openTasks("fetch-reader").use { db ->
            client(db, Fixtures.BOB).use { c ->
                val rows = c.fetchRemote("tasks", query, false)
                assertTrue(rows, rows.indexOf("\"id\":\"$tag-2\"") in 0 until rows.indexOf("\"id\":\"$tag-1\""))
                assertFalse("never another user's row: $rows", rows.contains("$tag-alice"))
                assertNull("not cached", db.get("tasks", "$tag-1"))
                c.fetchRemote("tasks", query, true)
                assertTrue(db.get("tasks", "$tag-1")!!.contains("\"_status\":\"synced\""))
                assertThrows(FerryException.UnknownColumn::class.java) {
                    runBlocking { c.fetchRemote("tasks", """{"where":{"column":"nope","op":"eq","value":1}}""", false) }
                }
                assertThrows(FerryException.MalformedJson::class.java) {
                    runBlocking { c.fetchRemote("tasks", "{not json", false) }
                }
                c.setOnline(false)
                assertThrows(FerryException.Offline::class.java) { runBlocking { c.fetchRemote("tasks", query, false) } }
            }
            FerrySyncClient(db, "http://127.0.0.1:9", StaticTokens(Fixtures.BOB), SyncConfig()).use { c ->
                assertThrows(FerryException.Offline::class.java) { runBlocking { c.fetchRemote("tasks", query, false) } }
            }
        }
    }
}
