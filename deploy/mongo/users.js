// A MongoDB user per service, each with a role on its own collections only: run by the mongo
// image (as root, from /docker-entrypoint-initdb.d) once, when its volume is new; later
// changes need the users changed by hand. Each user's name and password come from the URI
// its service connects with (compose secrets mongo_uri_*, tools/make_compose_secrets.py).
// NOT RUN HERE: the development machines have FerretDB 1.24, which has no users or roles
// (docs/operations.md, "What has not been run").
const fs = require("fs");

const database = "main_db"; // MONGO_DB, the default of the server, relay and runner
// Everything readWrite allows but dropping and renaming collections.
const actions = [
  "find", "insert", "update", "remove",
  "createCollection", "createIndex", "listIndexes", "killCursors", "collStats",
];
const services = {
  // The server: the outbox, the statuses and their hours, the resumable sessions and their
  // facts.
  mongo_uri_checkout: [
    "outbox", "event_statuses", "event_statuses_hours", "upload_sessions", "upload_facts",
  ],
  // The relays: the outbox, the statuses they mark sent and the hours of those they write,
  // their leases and members.
  mongo_uri_relay: [
    "outbox", "event_statuses", "event_statuses_hours", "outbox_relay_leases",
    "outbox_relay_members",
  ],
  // The runners: their per-video states.
  mongo_uri_runner: ["runner_videos"],
};

const admin = db.getSiblingDB("admin");
for (const [secret, collections] of Object.entries(services)) {
  const uri = new URL(fs.readFileSync(`/run/secrets/${secret}`, "utf8").trim());
  const user = decodeURIComponent(uri.username);
  admin.createRole({
    role: user,
    privileges: collections.map((collection) => ({
      resource: { db: database, collection },
      actions,
    })),
    roles: [],
  });
  admin.createUser({
    user,
    pwd: decodeURIComponent(uri.password),
    roles: [{ role: user, db: "admin" }],
  });
  print(`MongoDB user ${user}: ${collections.join(", ")} of ${database}`);
}
