package dev.ferry.tests

import dev.ferry.*
import dev.ferry.tests.Fixtures.openTasks
import kotlinx.coroutines.runBlocking
import org.junit.Assert.*
import org.junit.Test
import java.util.concurrent.CopyOnWriteArrayList

class LoggerTest {
    @Test
    fun coreLogLinesReachTheHostLoggerAndAThrowingLoggerIsHarmless() = runBlocking<Unit> {
        val lines = CopyOnWriteArrayList<String>()
        setLogger(object : Logger {
            override fun log(level: LogLevel, target: String, message: String) {
                lines.add("$level $target $message")
                throw IllegalStateException("logger bug")
            }
        }, LogLevel.INFO)
        openTasks("logger").use { db ->
            // A panicking listener is logged at error level by the core.
            db.addChangeListener(object : ChangeListener {
                override fun onChanges(eventsJson: String) = throw IllegalStateException("boom")
            }).use {
                db.put("tasks", """{"id":"l1"}""")
                db.flush()
            }
            val deadline = System.currentTimeMillis() + 5_000
            while (lines.none { it.contains("change listener panicked") } && System.currentTimeMillis() < deadline) {
                Thread.sleep(20)
            }
            assertTrue(lines.toString(), lines.any { it.startsWith("ERROR ferry::events") && it.contains("change listener panicked") })
            assertNotNull(db.get("tasks", "l1"))
        }
        // Replacing the logger and level is allowed.
        setLogger(object : Logger {
            override fun log(level: LogLevel, target: String, message: String) {}
        }, LogLevel.WARN)
    }
}
