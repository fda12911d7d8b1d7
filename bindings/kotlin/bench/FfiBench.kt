// FFI micro-benchmarks on the JVM: cost per call, and a 1k-record batch crossing as
// one JSON string vs as typed records, each against the same facade call made from
// Rust (bench_rust_baseline). Needs bindings generated from a `--features ffi-bench`
// build; run it with scripts/bench-ffi.sh. Prints a Markdown table of medians.
package dev.ferry.bench

import dev.ferry.*
import java.nio.file.Files

const val ROUNDS = 31
const val CALLS = 10_000
const val BATCH = 1_000

data class Task(val id: String, val title: String, val done: Boolean, val priority: Long?, val notes: String?)

fun median(rounds: Int, f: () -> Unit): Long {
    val ns = LongArray(rounds)
    for (i in 0 until rounds) {
        val t = System.nanoTime()
        f()
        ns[i] = System.nanoTime() - t
    }
    ns.sort()
    return ns[rounds / 2]
}

fun jsonString(sb: StringBuilder, s: String) {
    sb.append('"')
    for (c in s) when (c) {
        '"' -> sb.append("\\\"")
        '\\' -> sb.append("\\\\")
        '\n' -> sb.append("\\n")
        else -> if (c < ' ') sb.append(String.format("\\u%04x", c.code)) else sb.append(c)
    }
    sb.append('"')
}

/** What an app does before a JSON batch crosses: encode its objects. */
fun encode(tasks: List<Task>): String {
    val sb = StringBuilder(tasks.size * 96)
    sb.append('[')
    tasks.forEachIndexed { i, t ->
        if (i > 0) sb.append(',')
        sb.append("{\"id\":"); jsonString(sb, t.id)
        sb.append(",\"title\":"); jsonString(sb, t.title)
        sb.append(",\"done\":").append(t.done)
        sb.append(",\"priority\":").append(t.priority ?: "null")
        sb.append(",\"notes\":"); if (t.notes == null) sb.append("null") else jsonString(sb, t.notes)
        sb.append('}')
    }
    return sb.append(']').toString()
}

/** A small JSON reader (the JDK has none): what an app does after rows cross as JSON. */
class Json(private val s: String) {
    private var i = 0
    fun parse(): Any? { ws(); return value() }
    private fun ws() { while (i < s.length && s[i].isWhitespace()) i++ }
    private fun value(): Any? {
        ws()
        return when (s[i]) {
            '{' -> { i++; val m = HashMap<String, Any?>(); ws()
                if (s[i] == '}') { i++; return m }
                while (true) { ws(); val k = str(); ws(); i++; m[k] = value(); ws()
                    if (s[i++] == '}') return m } }
            '[' -> { i++; val l = ArrayList<Any?>(); ws()
                if (s[i] == ']') { i++; return l }
                while (true) { l.add(value()); ws(); if (s[i++] == ']') return l } }
            '"' -> str()
            't' -> { i += 4; true }
            'f' -> { i += 5; false }
            'n' -> { i += 4; null }
            else -> { val st = i; while (i < s.length && s[i] in "-+.eE0123456789") i++
                val n = s.substring(st, i); if (n.any { it in ".eE" }) n.toDouble() else n.toLong() }
        }
    }
    private fun str(): String {
        i++; val sb = StringBuilder()
        while (s[i] != '"') {
            if (s[i] == '\\') { i++; when (s[i]) {
                'n' -> sb.append('\n'); 't' -> sb.append('\t'); 'r' -> sb.append('\r')
                'u' -> { sb.append(s.substring(i + 1, i + 5).toInt(16).toChar()); i += 4 }
                else -> sb.append(s[i]) } } else sb.append(s[i])
            i++
        }
        i++
        return sb.toString()
    }
}

fun toTyped(tasks: List<Task>): List<TypedRecord> = tasks.map { t ->
    TypedRecord(t.id, mapOf(
        "title" to FieldValue.Text(t.title),
        "done" to FieldValue.Bool(t.done),
        "priority" to (t.priority?.let { FieldValue.Int(it) } ?: FieldValue.Null),
        "notes" to (t.notes?.let { FieldValue.Text(it) } ?: FieldValue.Null),
    ))
}

fun main() {
    val dir = Files.createTempDirectory("ferry-ffi-bench").toFile()
    val schema = """{"version":1,"collections":[{"name":"tasks","sync":"synced","columns":[
        {"name":"title","type":"string","default":""},{"name":"done","type":"boolean","default":false},
        {"name":"priority","type":"integer","nullable":true},{"name":"notes","type":"string","nullable":true}]}]}"""
    val tasks = (0 until BATCH).map { Task("task-$it", "Task number $it", it % 3 == 0, it.toLong(), if (it % 2 == 0) "a note about $it" else null) }
    val all = """{"limit":$BATCH}"""
    FerryDatabase.open(java.io.File(dir, "bench.db").path, schema).use { db ->
        db.put("tasks", encode(tasks))
        // Warm up the JIT and SQLite caches.
        repeat(20_000) { db.get("tasks", "task-1") }
        repeat(20) { db.put("tasks", encode(tasks)); db.benchPutTyped("tasks", toTyped(tasks)); db.query("tasks", all); db.benchQueryTyped("tasks", all) }

        val perCall = { f: () -> Unit -> median(ROUNDS) { repeat(CALLS) { f() } } / CALLS }
        val getNs = perCall { db.get("tasks", "task-1") }
        val statusNs = perCall { db.status() }
        val clientIdNs = perCall { db.clientId() }

        val putJson = median(ROUNDS) { db.put("tasks", encode(tasks)) }
        val putTyped = median(ROUNDS) { db.benchPutTyped("tasks", toTyped(tasks)) }
        val queryJson = median(ROUNDS) { db.query("tasks", all) }
        val queryJsonParsed = median(ROUNDS) { @Suppress("UNCHECKED_CAST") (Json(db.query("tasks", all)).parse() as List<Any?>).size }
        val queryTyped = median(ROUNDS) { db.benchQueryTyped("tasks", all) }
        val encodeOnly = median(ROUNDS) { encode(tasks) }
        val toTypedOnly = median(ROUNDS) { toTyped(tasks) }

        val rust = db.benchRustBaseline("tasks", "task-1", encode(tasks), toTyped(tasks), all, ROUNDS.toUInt(), CALLS.toUInt())
        fun us(ns: Long) = String.format("%.1f µs", ns / 1000.0)
        fun us(ns: ULong) = us(ns.toLong())
        println("| Work | Kotlin → Rust (JVM, JNA) | Same facade call in Rust | Crossing cost |")
        println("|---|---|---|---|")
        println("| `get` of one record (per call) | ${us(getNs)} | ${us(rust.getNs)} | ${us(getNs - rust.getNs.toLong())} |")
        println("| `status()` (Record with a map, per call) | ${us(statusNs)} | ${us(rust.statusNs)} | ${us(statusNs - rust.statusNs.toLong())} |")
        println("| `clientId()` (a String, per call) | ${us(clientIdNs)} | — | — |")
        println("| put 1k records, JSON (Kotlin encodes + 1 call) | ${us(putJson)} | ${us(rust.putJsonNs)} | ${us(putJson - rust.putJsonNs.toLong())} |")
        println("| put 1k records, typed (Kotlin builds records + 1 call) | ${us(putTyped)} | ${us(rust.putTypedNs)} | ${us(putTyped - rust.putTypedNs.toLong())} |")
        println("| query 1k records, JSON string only | ${us(queryJson)} | ${us(rust.queryJsonNs)} | ${us(queryJson - rust.queryJsonNs.toLong())} |")
        println("| query 1k records, JSON + parsed into Kotlin maps | ${us(queryJsonParsed)} | ${us(rust.queryJsonNs)} | ${us(queryJsonParsed - rust.queryJsonNs.toLong())} |")
        println("| query 1k records, typed | ${us(queryTyped)} | ${us(rust.queryTypedNs)} | ${us(queryTyped - rust.queryTypedNs.toLong())} |")
        println("| (Kotlin only) encode 1k tasks to JSON | ${us(encodeOnly)} | | |")
        println("| (Kotlin only) build 1k TypedRecords | ${us(toTypedOnly)} | | |")
    }
    dir.deleteRecursively()
}
