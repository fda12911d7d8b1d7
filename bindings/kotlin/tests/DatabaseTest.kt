package dev.ferry.tests

import dev.ferry.*
import dev.ferry.tests.Fixtures.openTasks
import org.junit.Assert.*
import org.junit.Test

class DatabaseTest {
    @Test
    fun batchWritesAndReadsCrossAsOneJsonStringEach() {
        openTasks("batch").use { db ->
            val rows = db.create(
                "tasks",
                """[{"id":"t1","title":"one","priority":1},{"id":"t2","title":"two","priority":2},
                    {"id":"t3","title":"three","priority":3}]""",
            )
            assertEquals(3, rowCount(rows))
            assertTrue(rows, rows.contains("\"_status\":\"pending\""))
            db.update("tasks", """[{"id":"t1","done":true}]""")
            db.put("tasks", """{"id":"t4","title":"four"}""")
            db.delete("tasks", listOf("t2"))

            assertTrue(db.get("tasks", "t1")!!.contains("\"done\":true"))
            assertNull(db.get("tasks", "t2"))
            assertEquals(2, rowCount(db.getMany("tasks", listOf("t4", "t2", "t1"))))
            val open = db.query("tasks", """{"where":{"column":"done","op":"eq","value":false},"sort":[{"column":"title"}]}""")
            assertEquals(2, rowCount(open))
            assertTrue(open, open.indexOf("\"four\"") < open.indexOf("\"three\""))
            assertEquals(3uL, db.count("tasks", "{}"))

            val status = db.status()
            assertEquals(3uL, status.records["tasks"])
            assertTrue(status.pending > 0uL)
            assertEquals(0uL, status.quarantined)
            assertTrue(db.outbox().contains("\"record_id\":\"t1\""))
            assertEquals("[]", db.quarantine())
            assertTrue(db.anchors().isEmpty())
        }
    }

    @Test
    fun aMixedBatchIsOneTransactionAndOneEvent() {
        openTasks("mixed").use { db ->
            val events = Events()
            db.addChangeListener(events).use {
                db.write(
                    """[{"op":"create","collection":"tasks","fields":{"id":"a","title":"A"}},
                        {"op":"put","collection":"projects","fields":{"id":"p","name":"P"}},
                        {"op":"delete","collection":"tasks","id":"a"}]""",
                )
                db.flush()
                assertEquals(1, events.seen.size)
                val ev = events.seen[0]
                assertTrue(ev, ev.startsWith("{\"source\":\"local\""))
                assertTrue(ev, ev.contains("\"deleted\":[\"a\"]"))
                assertTrue(ev, ev.contains("\"collection\":\"projects\""))
            }
            // All or nothing: the second op fails, so the first is not kept either.
            try {
                db.write(
                    """[{"op":"create","collection":"tasks","fields":{"id":"b"}},
                        {"op":"create","collection":"tasks","fields":{"id":"b"}}]""",
                )
                fail("duplicate create must fail")
            } catch (e: FerryException.AlreadyExists) {
                assertTrue(e.message!!, e.message!!.contains("`b`"))
            }
            assertNull(db.get("tasks", "b"))
        }
    }

    @Test
    fun badInputGivesTypedExceptionsWithTheCoreMessage() {
        openTasks("errors").use { db ->
            assertThrows(FerryException.MalformedJson::class.java) { db.put("tasks", "{not json") }
            val unknown = assertThrows(FerryException.UnknownCollection::class.java) { db.put("nope", "{}") }
            assertEquals("nope", unknown.collection)
            assertEquals("unknown collection `nope`", unknown.detail)
            val wrong = assertThrows(FerryException.WrongType::class.java) {
                db.put("tasks", """{"id":"x","priority":"high"}""")
            }
            assertTrue(wrong.message!!, wrong.message!!.contains("tasks.priority"))
            assertThrows(FerryException.UnknownColumn::class.java) { db.put("tasks", """{"id":"x","colour":"red"}""") }
            assertThrows(FerryException.NotFound::class.java) { db.update("tasks", """{"id":"missing","done":true}""") }
            assertThrows(FerryException.InvalidInput::class.java) { db.update("tasks", """{"done":true}""") }
            assertThrows(FerryException.MalformedJson::class.java) { db.write("""[{"op":"upsert","collection":"tasks"}]""") }
            assertThrows(FerryException.InvalidInput::class.java) { db.query("tasks", """{"where":{"column":"done","op":"between"}}""") }
            assertThrows(FerryException.NotFound::class.java) { db.discardQuarantined("no-such-mutation") }
            assertThrows(FerryException.Schema::class.java) {
                FerryDatabase.open(Fixtures.dbPath("bad-schema"), """{"version":1,"collections":[{"name":"t","columns":[{"name":"a","type":"blob"}]}]}""")
            }
            // Nothing was written by any of them.
            assertEquals(0uL, db.count("tasks", "{}"))
            assertEquals("[]", db.outbox())
        }
    }

    @Test
    fun reopeningWithTheStoredSchemaKeepsTheData() {
        val path = Fixtures.dbPath("reopen")
        FerryDatabase.open(path, Fixtures.TASKS_SCHEMA).use { it.put("tasks", """{"id":"kept"}""") }
        FerryDatabase.openExisting(path).use { db ->
            assertNotNull(db.get("tasks", "kept"))
            assertTrue(db.schemaJson().contains("\"tasks\""))
        }
    }

    @Test
    fun observedQueryGetsTheResultNowAndAfterEachCommit() {
        openTasks("observe").use { db ->
            val results = Results()
            val handle = db.observe("tasks", """{"where":{"column":"done","op":"eq","value":false}}""", results)
            db.flush()
            assertEquals(listOf("[]"), results.seen.toList())
            db.put("tasks", """[{"id":"o1"},{"id":"o2","done":true}]""")
            db.flush()
            assertEquals(2, results.seen.size)
            assertEquals(1, rowCount(results.seen.last()))
            handle.cancel()
            assertFalse(handle.isActive())
            db.put("tasks", """{"id":"o3"}""")
            db.flush()
            assertEquals("no result after cancel", 2, results.seen.size)
            handle.cancel() // idempotent
        }
    }

    @Test
    fun closingTheHandleUnsubscribes() {
        openTasks("close-handle").use { db ->
            val events = Events()
            db.addChangeListener(events).use { db.put("tasks", """{"id":"e1"}""") ; db.flush() }
            db.put("tasks", """{"id":"e2"}""")
            db.flush()
            assertEquals(1, events.seen.size)
        }
    }

    @Test
    fun aThrowingListenerDoesNotBreakTheStoreOrTheOtherListeners() {
        openTasks("throwing").use { db ->
            val calls = java.util.concurrent.atomic.AtomicInteger()
            val thrower = object : ChangeListener {
                override fun onChanges(eventsJson: String) {
                    calls.addAndGet(splitEvents(eventsJson).size)
                    throw IllegalStateException("listener bug")
                }
            }
            val throwingQuery = object : QueryListener {
                override fun onResult(rowsJson: String) = throw RuntimeException("query listener bug")
            }
            val good = Events()
            val h1 = db.addChangeListener(thrower)
            val h2 = db.observe("tasks", "{}", throwingQuery)
            val h3 = db.addChangeListener(good)
            for (i in 1..3) db.put("tasks", """{"id":"x$i"}""")
            db.flush()
            assertEquals(3, calls.get())
            assertEquals(3, good.seen.size)
            assertEquals(3uL, db.count("tasks", "{}"))
            // Still writable and readable afterwards.
            db.delete("tasks", listOf("x1"))
            assertNull(db.get("tasks", "x1"))
            listOf(h1, h2, h3).forEach { it.close() }
        }
    }

    @Test
    fun aBulkBatchIsOneCallAndOneEvent() {
        openTasks("bulk").use { db ->
            val events = Events()
            db.addChangeListener(events).use {
                val json = (0 until 1000).joinToString(",", "[", "]") { """{"id":"r$it","title":"row $it","priority":$it}""" }
                assertEquals(1000, rowCount(db.put("tasks", json)))
                db.flush()
                assertEquals(1, events.seen.size)
                assertEquals(1000, rowCount(events.seen[0]))
                assertEquals(1000, rowCount(db.query("tasks", "{}")))
            }
        }
    }
}
