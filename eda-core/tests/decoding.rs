//! Rule 7 of DESIGN.md, by property: whatever arrives from outside the
//! service is decoded into a value or a clear error, never a panic.
//!
//! Each property runs [`DEFAULT_CASES`] random cases (the whole file takes
//! under a second in a debug build), so that it runs in CI on every change.
//! For a longer search, set `PROPTEST_CASES`, which replaces that number for
//! every property of the file:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p eda-core --test decoding --release
//! ```
//!
//! A failing case is shrunk, printed, and its seed saved in
//! `eda-core/tests/decoding.proptest-regressions` (commit that file: its
//! cases are replayed first on every later run).
#![allow(missing_docs)]

use std::cell::RefCell;
use std::future::Future;
use std::sync::Mutex;

use eda_core::adapters::rabbitmq::{CAUSATION_HEADER, TIMESTAMP_HEADER, metadata, properties};
use eda_core::prelude::*;
use eda_core::{ExternalMessage, IncomingError, Message, MessageId, Timestamp};
use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The cases of each property, unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

/// [`DEFAULT_CASES`], or `PROPTEST_CASES` when it is set.
/// (`ProptestConfig::with_cases` would ignore the variable.)
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

// ---------------------------------------------------------------------------
// The messages of this test's bus.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Kind {
    Plain,
    Sized(u8),
    Shaped { sides: i16, name: String },
}

/// A command with the usual field types: strings, numbers, a list, an
/// option, an enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(name = "props.record", output = ())]
pub struct Record {
    pub text: String,
    pub n: u32,
    pub tags: Vec<String>,
    pub note: Option<i64>,
    pub kind: Kind,
}

/// An event with one handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "props.recorded")]
pub struct Recorded {
    pub id: u64,
    pub flag: bool,
    pub labels: Vec<(String, i32)>,
}

/// An event without handlers: it is decoded all the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "props.ignored")]
pub struct Ignored {
    pub why: String,
}

const KNOWN: [&str; 3] = [Record::NAME, Recorded::NAME, Ignored::NAME];

/// What the handlers saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Record(Record, Metadata),
    Recorded(Recorded, Metadata),
}

#[derive(Default)]
pub struct Observed(Mutex<Vec<Seen>>);
impl Adapter for Observed {}

#[command_handler]
async fn handle_record(
    cmd: Record,
    observed: &Observed,
    metadata: &Metadata,
) -> Result<(), BoxError> {
    observed
        .0
        .lock()
        .unwrap()
        .push(Seen::Record(cmd, *metadata));
    Ok(())
}

#[event_handler]
async fn handle_recorded(event: &Recorded, observed: &Observed, metadata: &Metadata) {
    observed
        .0
        .lock()
        .unwrap()
        .push(Seen::Recorded(event.clone(), *metadata));
}

/// A new bus with this file's handlers only, and a fresh [`Observed`].
fn bus() -> MessageBus {
    MessageBus::builder()
        .scope(module_path!())
        .adapter(Observed::default())
        .build()
        .expect("wiring")
}

fn observed(bus: &MessageBus) -> Vec<Seen> {
    bus.adapter::<Observed>().unwrap().0.lock().unwrap().clone()
}

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// Runs a future on this test thread's runtime (one per thread: proptest
/// runs a property's cases one after the other on its test's thread).
fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| {
        runtime
            .borrow_mut()
            .get_or_insert_with(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
            })
            .block_on(future)
    })
}

// ---------------------------------------------------------------------------
// Strategies.

/// Strings, with the odd characters proptest favours (control characters,
/// quotes, backslashes, non-ASCII).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,12}", any::<String>()]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Plain),
        any::<u8>().prop_map(Kind::Sized),
        (any::<i16>(), text()).prop_map(|(sides, name)| Kind::Shaped { sides, name }),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        text(),
        any::<u32>(),
        prop::collection::vec(text(), 0..4),
        any::<Option<i64>>(),
        kind(),
    )
        .prop_map(|(text, n, tags, note, kind)| Record {
            text,
            n,
            tags,
            note,
            kind,
        })
}

fn recorded() -> impl Strategy<Value = Recorded> {
    (
        any::<u64>(),
        any::<bool>(),
        prop::collection::vec((text(), any::<i32>()), 0..4),
    )
        .prop_map(|(id, flag, labels)| Recorded { id, flag, labels })
}

fn uuid() -> impl Strategy<Value = Uuid> {
    prop_oneof![
        any::<u128>().prop_map(Uuid::from_u128),
        Just(Uuid::nil()),
        Just(Uuid::max()),
    ]
}

fn message_id() -> impl Strategy<Value = MessageId> {
    uuid().prop_map(MessageId::from)
}

/// Every form `Uuid::parse_str` knows, its digits in either case.
fn uuid_text(id: Uuid, form: u8, upper: bool) -> String {
    let hyphenated = if upper {
        id.hyphenated().to_string().to_uppercase()
    } else {
        id.hyphenated().to_string()
    };
    match form % 4 {
        0 => hyphenated,
        1 => hyphenated.replace('-', ""),
        2 => format!("urn:uuid:{hyphenated}"),
        _ => format!("{{{hyphenated}}}"),
    }
}

/// Timestamps up to `i64::MAX` milliseconds (292 million years), the range
/// of an AMQP `long-long-int`.
fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        (0..=i64::MAX as u64).prop_map(Timestamp::from_millis),
        (0u64..4_102_444_800_000).prop_map(Timestamp::from_millis),
        Just(Timestamp::from_millis(0)),
        Just(Timestamp::from_millis(i64::MAX as u64)),
    ]
}

fn metadata_value() -> impl Strategy<Value = Metadata> {
    (
        message_id(),
        message_id(),
        prop::option::of(message_id()),
        timestamp(),
    )
        .prop_map(
            |(message_id, correlation_id, causation_id, timestamp)| Metadata {
                message_id,
                correlation_id,
                causation_id,
                timestamp,
            },
        )
}

/// Field names of this file's messages and of `Metadata`, so that random
/// objects are often almost right.
const FIELDS: [&str; 16] = [
    "text",
    "n",
    "tags",
    "note",
    "kind",
    "Sized",
    "Shaped",
    "sides",
    "name",
    "id",
    "flag",
    "labels",
    "message_id",
    "correlation_id",
    "causation_id",
    "timestamp",
];

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
        uuid().prop_map(|id| Value::from(id.to_string())),
        Just(Value::from("Plain")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            prop::sample::select(FIELDS.to_vec()).prop_map(String::from),
            text()
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// How a valid body is damaged.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(i, x)| Damage::Flip(i, x)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Damage::Remove),
    ]
}

fn damaged(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        if bytes.is_empty() {
            break;
        }
        match d {
            Damage::Truncate(i) => bytes.truncate(i.index(bytes.len())),
            Damage::Flip(i, x) => {
                let i = i.index(bytes.len());
                bytes[i] ^= x;
            }
            Damage::Insert(i, b) => {
                let i = i.index(bytes.len() + 1);
                bytes.insert(i, *b);
            }
            Damage::Remove(i) => {
                bytes.remove(i.index(bytes.len()));
            }
        }
    }
    bytes
}

/// A body for a message of this file: random bytes, random JSON, or a valid
/// message, as it is or damaged.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        record().prop_map(|m| serde_json::to_vec(&m).unwrap()),
        recorded().prop_map(|m| serde_json::to_vec(&m).unwrap()),
        text().prop_map(|why| serde_json::to_vec(&Ignored { why }).unwrap()),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        valid.clone(),
        (valid, prop::collection::vec(damage(), 1..4)).prop_map(|(b, d)| damaged(b, &d)),
    ]
}

// ---------------------------------------------------------------------------
// MessageBus::handle_incoming

/// Hands `body` to the bus as the message `M` and checks the outcome against
/// serde's own decoding of the body: handled if and only if it decodes, and
/// then the handler saw exactly the decoded message with the metadata given.
fn check_incoming<M: Message + PartialEq>(
    body: &[u8],
    metadata: Metadata,
    seen: impl Fn(M, Metadata) -> Option<Seen>,
) -> Result<(), TestCaseError> {
    let bus = bus();
    let result = block_on(bus.handle_incoming(M::NAME, metadata, body));
    match (serde_json::from_slice::<M>(body), result) {
        (Ok(message), Ok(())) => {
            let expected: Vec<_> = seen(message, metadata).into_iter().collect();
            prop_assert_eq!(observed(&bus), expected);
        }
        (Err(expected), Err(IncomingError::Malformed { name, source })) => {
            prop_assert_eq!(name, M::NAME);
            prop_assert_eq!(source.to_string(), expected.to_string());
            prop_assert_eq!(observed(&bus), vec![]);
        }
        (decoded, result) => {
            return Err(TestCaseError::fail(format!(
                "serde says {decoded:?}, the bus says {result:?}, for {:?}",
                String::from_utf8_lossy(body)
            )));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// A name no message has is `UnknownMessage`, naming it, and runs
    /// nothing.
    #[test]
    fn an_unknown_name_is_refused_by_name(
        name in prop_oneof![
            text(),
            text().prop_map(|s| format!("props.{s}")),
            (prop::sample::select(KNOWN.to_vec()), prop_oneof![Just(" "), Just("\0"), Just("."), Just("\u{200b}")])
                .prop_map(|(known, extra)| format!("{known}{extra}")),
            prop::sample::select(KNOWN.to_vec()).prop_map(str::to_uppercase),
        ],
        body in body(),
    ) {
        prop_assume!(!KNOWN.contains(&name.as_str()));
        let bus = bus();
        let err = block_on(bus.handle_incoming(&name, Metadata::new(), &body)).unwrap_err();
        prop_assert!(
            matches!(&err, IncomingError::UnknownMessage { name: n } if *n == name),
            "{err:?}"
        );
        prop_assert_eq!(err.to_string(), format!("unknown message `{name}`"));
        prop_assert_eq!(observed(&bus), vec![]);
    }

    /// Any body of a command is handled if and only if it decodes; else
    /// `Malformed` with serde's reason.
    #[test]
    fn any_command_body_is_handled_or_malformed(body in body(), metadata in metadata_value()) {
        check_incoming::<Record>(&body, metadata, |m, md| Some(Seen::Record(m, md)))?;
    }

    /// The same for an event with a handler...
    #[test]
    fn any_event_body_is_handled_or_malformed(body in body(), metadata in metadata_value()) {
        check_incoming::<Recorded>(&body, metadata, |m, md| Some(Seen::Recorded(m, md)))?;
    }

    /// ... and for an event without handlers, which is decoded all the same.
    #[test]
    fn an_unhandled_event_is_still_decoded(body in body(), metadata in metadata_value()) {
        check_incoming::<Ignored>(&body, metadata, |_, _| None)?;
    }

    /// A message serialised by serde reaches its handler unchanged, with its
    /// metadata.
    #[test]
    fn a_valid_message_round_trips_to_its_handler(
        command in record(),
        event in recorded(),
        metadata in metadata_value(),
    ) {
        let bus = bus();
        block_on(bus.handle_incoming(Record::NAME, metadata, &serde_json::to_vec(&command).unwrap()))
            .unwrap();
        block_on(bus.handle_incoming(Recorded::NAME, metadata, &serde_json::to_vec(&event).unwrap()))
            .unwrap();
        prop_assert_eq!(
            observed(&bus),
            vec![Seen::Record(command, metadata), Seen::Recorded(event, metadata)]
        );
    }
}

// ---------------------------------------------------------------------------
// AMQP properties → Metadata

/// A string that fits an AMQP short string (255 bytes).
fn short_text() -> impl Strategy<Value = String> {
    text().prop_map(|mut s| {
        while s.len() > 255 {
            s.pop();
        }
        s
    })
}

/// An id as a producer may send it: a UUID in any of its forms, or not a
/// UUID at all.
fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (uuid(), any::<u8>(), any::<bool>()).prop_map(|(id, form, upper)| uuid_text(id, form, upper)),
        2 => short_text(),
        1 => uuid().prop_map(|id| format!(" {id}")),
        1 => uuid().prop_map(|id| id.to_string()[..35].to_owned()),
    ]
}

/// Any AMQP field value, of every type, with edge-case numbers.
fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        prop_oneof![Just(i64::MIN), Just(-1), Just(0), Just(i64::MAX)]
            .prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        id_text().prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
        id_text().prop_map(|s| AMQPValue::LongString(LongString::from(s))),
        prop::collection::vec(any::<u8>(), 0..48)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        prop::collection::vec(any::<u8>(), 0..16)
            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            prop::collection::vec((short_text(), inner), 0..4).prop_map(|fields| {
                let mut table = FieldTable::default();
                for (k, v) in fields {
                    table.insert(ShortString::from(k), v);
                }
                AMQPValue::FieldTable(table)
            }),
        ]
    })
}

/// The properties of a delivery from any producer.
#[derive(Debug, Clone)]
struct Delivered {
    message_id: Option<String>,
    correlation_id: Option<String>,
    causation: Option<AMQPValue>,
    timestamp_ms: Option<AMQPValue>,
    others: Vec<(String, AMQPValue)>,
    timestamp: Option<u64>,
}

fn delivered() -> impl Strategy<Value = Delivered> {
    (
        prop::option::of(id_text()),
        prop::option::of(id_text()),
        prop::option::of(prop_oneof![
            amqp_value(),
            uuid().prop_map(|id| AMQPValue::LongString(id.to_string().into())),
        ]),
        prop::option::of(prop_oneof![
            amqp_value(),
            (0..=i64::MAX).prop_map(AMQPValue::LongLongInt),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
        ]),
        prop::collection::vec((short_text(), amqp_value()), 0..3),
        prop::option::of(prop_oneof![any::<u64>(), 0u64..4_102_444_800]),
    )
        .prop_map(
            |(message_id, correlation_id, causation, timestamp_ms, others, timestamp)| Delivered {
                message_id,
                correlation_id,
                causation,
                timestamp_ms,
                others,
                timestamp,
            },
        )
}

impl Delivered {
    fn properties(&self) -> BasicProperties {
        let mut p = BasicProperties::default();
        if let Some(id) = &self.message_id {
            p = p.with_message_id(ShortString::from(id.as_str()));
        }
        if let Some(id) = &self.correlation_id {
            p = p.with_correlation_id(ShortString::from(id.as_str()));
        }
        if let Some(t) = self.timestamp {
            p = p.with_timestamp(t);
        }
        let mut headers = FieldTable::default();
        for (k, v) in &self.others {
            headers.insert(ShortString::from(k.as_str()), v.clone());
        }
        if let Some(v) = &self.causation {
            headers.insert(CAUSATION_HEADER.into(), v.clone());
        }
        if let Some(v) = &self.timestamp_ms {
            headers.insert(TIMESTAMP_HEADER.into(), v.clone());
        }
        if !headers.inner().is_empty() {
            p = p.with_headers(headers);
        }
        p
    }
}

fn parse_id(s: &str) -> Option<MessageId> {
    s.parse().ok()
}

/// Decodes a value with serde and checks that a success re-encodes to a
/// value that decodes to the same.
fn check_json<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    value: &Value,
) -> Result<Option<T>, TestCaseError> {
    let Ok(decoded) = serde_json::from_value::<T>(value.clone()) else {
        return Ok(None);
    };
    let again: T = serde_json::from_value(serde_json::to_value(&decoded).unwrap()).unwrap();
    prop_assert_eq!(&again, &decoded);
    Ok(Some(decoded))
}

proptest! {
    #![proptest_config(config())]

    /// The metadata of any delivery is read as the module documents it, or
    /// refused with a reason when there is no message id to deduplicate by.
    #[test]
    fn any_amqp_properties_give_metadata_or_a_reason(d in delivered()) {
        let properties = d.properties();
        let before = Timestamp::now();
        let result = metadata(&properties);
        let after = Timestamp::now();

        let Some(id) = d.message_id.as_deref().and_then(parse_id) else {
            let reason = result.unwrap_err();
            match &d.message_id {
                None => prop_assert_eq!(reason, "no message_id property"),
                Some(_) => prop_assert!(reason.starts_with("message_id is not a UUID: "), "{}", reason),
            }
            return Ok(());
        };
        let m = result.unwrap();
        prop_assert_eq!(m.message_id, id);
        prop_assert_eq!(
            m.correlation_id,
            d.correlation_id.as_deref().and_then(parse_id).unwrap_or(id)
        );
        let causation = match &d.causation {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok().and_then(parse_id),
            _ => None,
        };
        prop_assert_eq!(m.causation_id, causation);
        match (&d.timestamp_ms, d.timestamp) {
            (Some(AMQPValue::LongLongInt(ms)), _) if *ms >= 0 => {
                prop_assert_eq!(m.timestamp.as_millis(), *ms as u64);
            }
            (_, Some(seconds)) => {
                prop_assert_eq!(m.timestamp.as_millis(), seconds.saturating_mul(1000));
            }
            (_, None) => prop_assert!(before <= m.timestamp && m.timestamp <= after),
        }
    }

    /// What the relay publishes is read back by the consumer as it was:
    /// `properties` then `metadata` is the identity.
    #[test]
    fn published_metadata_round_trips(
        metadata_in in metadata_value(),
        name in prop::sample::select(KNOWN.to_vec()),
        payload in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let message = ExternalMessage { name: name.to_owned(), metadata: metadata_in, payload, trace: Default::default() };
        let p = properties(&message);
        prop_assert_eq!(p.kind().as_ref().map(ShortString::as_str), Some(name));
        prop_assert_eq!(metadata(&p), Ok(metadata_in));
    }

    /// A timestamp past what an AMQP `long-long-int` holds is not written
    /// as a negative header; it travels to the second in the `timestamp`
    /// property.
    #[test]
    fn a_timestamp_past_i64_is_kept_to_the_second(
        metadata_in in metadata_value(),
        ms in (i64::MAX as u64 + 1)..=u64::MAX,
    ) {
        let metadata_in = Metadata { timestamp: Timestamp::from_millis(ms), ..metadata_in };
        let p = properties(&ExternalMessage {
            name: Record::NAME.into(),
            metadata: metadata_in,
            payload: vec![],
            trace: Default::default(),
        });
        let header = p.headers().as_ref().and_then(|h| h.inner().get(TIMESTAMP_HEADER).cloned());
        prop_assert!(
            !matches!(header, Some(AMQPValue::LongLongInt(ms)) if ms < 0),
            "{header:?}"
        );
        let m = metadata(&p).unwrap();
        prop_assert_eq!(m.timestamp.as_millis(), ms / 1000 * 1000);
        prop_assert_eq!(Metadata { timestamp: metadata_in.timestamp, ..m }, metadata_in);
    }

    // -----------------------------------------------------------------------
    // MessageId

    /// Any string parses to an id or an error; an id is what `Uuid` reads.
    #[test]
    fn any_string_parses_as_an_id_or_an_error(s in prop_oneof![text(), id_text()]) {
        let parsed = s.parse::<MessageId>();
        prop_assert_eq!(parsed.as_ref().ok().map(MessageId::as_uuid), Uuid::parse_str(&s).ok());
        if let Ok(id) = parsed {
            prop_assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        }
    }

    /// Display then parse is the identity, in every form a producer may
    /// send.
    #[test]
    fn an_id_round_trips_through_its_text(id in uuid(), form in any::<u8>(), upper in any::<bool>()) {
        let id = MessageId::from(id);
        prop_assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        prop_assert_eq!(format!("{id:?}"), id.to_string());
        prop_assert_eq!(uuid_text(id.as_uuid(), form, upper).parse::<MessageId>().unwrap(), id);
    }

    // -----------------------------------------------------------------------
    // serde forms of the metadata

    /// Any JSON value decodes to a `Metadata`, a `MessageId` or a
    /// `Timestamp`, or to an error; what decodes re-encodes to itself.
    #[test]
    fn any_json_decodes_to_metadata_or_an_error(value in json()) {
        check_json::<Metadata>(&value)?;
        check_json::<Timestamp>(&value)?;
        if let Some(id) = check_json::<MessageId>(&value)? {
            // Only from a string, in a form `parse` reads too.
            prop_assert_eq!(value.as_str().map(str::parse::<MessageId>), Some(Ok(id)));
        }
    }

    /// Metadata round-trips through JSON, in the form the outbox and the
    /// tests see (field names, ids as strings, milliseconds as a number).
    #[test]
    fn metadata_round_trips_through_json(m in metadata_value()) {
        let json = serde_json::to_value(m).unwrap();
        prop_assert_eq!(&json["message_id"], &Value::from(m.message_id.to_string()));
        prop_assert_eq!(&json["timestamp"], &Value::from(m.timestamp.as_millis()));
        prop_assert_eq!(serde_json::from_value::<Metadata>(json).unwrap(), m);
    }
}
