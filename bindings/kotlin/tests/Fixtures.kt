package dev.ferry.tests

import dev.ferry.*
import java.nio.file.Files
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.TimeUnit

/** Shared schema, paths and recording listeners for the Kotlin tests. */
object Fixtures {
    /** examples/tasks.schema.json */
    const val TASKS_SCHEMA = """
    {"version": 1, "collections": [
      {"name": "tasks", "sync": "synced", "columns": [
        {"name": "title", "type": "string", "default": ""},
        {"name": "done", "type": "boolean", "default": false},
        {"name": "priority", "type": "integer", "nullable": true},
        {"name": "notes", "type": "string", "nullable": true},
        {"name": "archived", "type": "boolean", "nullable": true},
        {"name": "project", "type": "string", "nullable": true}]},
      {"name": "projects", "sync": "synced", "columns": [{"name": "name", "type": "string"}]},
      {"name": "drafts", "sync": "local_only", "columns": [
        {"name": "body", "type": "string", "default": ""},
        {"name": "meta", "type": "json", "nullable": true}]}
    ]}"""

    /**
     * The same, except `tasks.priority` is a string here while the dev server stores an
     * integer: a create carrying a priority is valid locally and rejected by the server.
     */
    val TASKS_SCHEMA_LOOSE = TASKS_SCHEMA.replace(
        """{"name": "priority", "type": "integer", "nullable": true}""",
        """{"name": "priority", "type": "string", "nullable": true}""",
    )

    const val ALICE = "alice-dev-token"
    const val BOB = "bob-dev-token"

    private val dir by lazy { Files.createTempDirectory("ferry-kotlin-tests").toFile() }

    fun dbPath(name: String): String = java.io.File(dir, "$name-${System.nanoTime()}.db").path

    fun openTasks(name: String, schema: String = TASKS_SCHEMA): FerryDatabase =
        FerryDatabase.open(dbPath(name), schema)

    /** The server the test script started; its absence is a failure, never a skip. */
    fun serverUrl(): String = System.getProperty("ferry.server.url")
        ?: throw AssertionError("-Dferry.server.url is not set: run scripts/test-kotlin-e2e.sh")

    fun client(db: FerryDatabase, token: String = ALICE): FerrySyncClient =
        FerrySyncClient(db, serverUrl(), StaticTokens(token), SyncConfig(pushDebounceMs = 50uL))
}

class StaticTokens(private val value: String) : TokenProvider {
    override suspend fun token(refresh: Boolean): String = value
}

/** Records every event JSON (split out of the bursts the core delivers); `await`
 *  waits for one matching a predicate. */
class Events : ChangeListener {
    val seen = CopyOnWriteArrayList<String>()
    val bursts = CopyOnWriteArrayList<String>()
    private val lock = Object()

    override fun onChanges(eventsJson: String) {
        bursts.add(eventsJson)
        seen.addAll(splitEvents(eventsJson))
        synchronized(lock) { lock.notifyAll() }
    }

    fun await(what: String, timeoutMs: Long = 5_000, p: (String) -> Boolean): String {
        val deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs)
        synchronized(lock) {
            while (true) {
                seen.firstOrNull(p)?.let { return it }
                val left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime())
                if (left <= 0) throw AssertionError("no event $what within ${timeoutMs}ms; saw $seen")
                lock.wait(left)
            }
        }
    }
}

/** Records every observed query result. */
class Results : QueryListener {
    val seen = CopyOnWriteArrayList<String>()
    override fun onResult(rowsJson: String) {
        seen.add(rowsJson)
    }
}

/** Counts `"id":` occurrences: the number of rows in a JSON array of rows. */
fun rowCount(json: String): Int = Regex("\"id\":").findAll(json).count()

/** The top-level objects of a JSON array, as strings (the events of one burst). */
fun splitEvents(json: String): List<String> {
    val out = mutableListOf<String>()
    var depth = 0
    var start = -1
    var inString = false
    var escaped = false
    for ((i, ch) in json.withIndex()) {
        if (inString) {
            if (escaped) escaped = false
            else if (ch == '\\') escaped = true
            else if (ch == '"') inString = false
            continue
        }
        when (ch) {
            '"' -> inString = true
            '{' -> { if (depth == 0) start = i; depth++ }
            '}' -> { depth--; if (depth == 0) out.add(json.substring(start, i + 1)) }
        }
    }
    return out
}

/** Waits (without blocking a listener thread) until every event committed so far was delivered. */
fun FerryDatabase.flush() = kotlinx.coroutines.runBlocking { flushEvents() }
