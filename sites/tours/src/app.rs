//! The app's services. Each is an HTTP/JSON server with `/healthz`, logs every call with the
//! site, and says in every answer which service, version and site served it.
//!
//! * `tour-catalog` (`v1`, `v2`): `GET /tours`, `GET /tours/{id}`. v2 adds ratings and has
//!   spring prices, so a traffic split is visible to users.
//! * `notification`: `POST /notify`, `GET /notifications`.
//! * `payment`: `POST /charge`; calls notification (a failed notification does not fail the
//!   payment, it is reported).
//! * `booking`: `POST /bookings` (calls tour-catalog for the price, then payment), `GET
//!   /bookings`. Bookings are kept in a JSON-lines file when `--data` is given.
//! * `frontend`: the web page (`GET /`), and `/api/tours`, `/api/bookings` behind it.

use multimesh_core::locks::lock;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::ServedBy;
use crate::client::{CallError, Egress};

/// The services of the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The web front end.
    Frontend,
    /// Tours and prices.
    TourCatalog,
    /// Bookings.
    Booking,
    /// Payments.
    Payment,
    /// Notifications.
    Notification,
}

impl Kind {
    /// The service name callers use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Frontend => "frontend",
            Kind::TourCatalog => "tour-catalog",
            Kind::Booking => "booking",
            Kind::Payment => "payment",
            Kind::Notification => "notification",
        }
    }
}

/// What one running service knows.
pub struct Ctx {
    /// Which service this is.
    pub kind: Kind,
    /// Who answers.
    pub served_by: ServedBy,
    /// The way to the other services (none for leaf services).
    pub egress: Option<Egress>,
    /// Bookings or notifications kept by this instance.
    records: Mutex<Vec<Value>>,
    data: Option<PathBuf>,
}

impl Ctx {
    /// A service `kind` at `site`, version `version`, calling others through `egress`, keeping
    /// its records in `data` (JSON lines) when given.
    pub fn new(
        kind: Kind,
        site: &str,
        version: &str,
        egress: Option<Egress>,
        data: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let mut records = Vec::new();
        if let Some(p) = &data {
            match std::fs::read_to_string(p) {
                Ok(text) => {
                    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
                        records.push(
                            serde_json::from_str(line)
                                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", p.display(), i + 1))?,
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("{}: {e}", p.display()),
            }
        }
        Ok(Self {
            kind,
            served_by: ServedBy {
                service: kind.name().to_string(),
                version: version.to_string(),
                site: site.to_string(),
            },
            egress,
            records: Mutex::new(records),
            data,
        })
    }

    fn keep(&self, record: Value) -> Result<(), String> {
        if let Some(p) = &self.data {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            writeln!(f, "{record}").map_err(|e| format!("{}: {e}", p.display()))?;
        }
        lock(&self.records).push(record);
        Ok(())
    }

    fn records(&self) -> Vec<Value> {
        lock(&self.records).clone()
    }

    fn egress(&self) -> Result<&Egress, ApiError> {
        self.egress.as_ref().ok_or_else(|| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": format!("{} was started without --egress", self.kind.name())}),
            )
        })
    }
}

/// An error answer: a status and a JSON body with `error`.
pub struct ApiError(StatusCode, Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn bad_request(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, json!({"error": message}))
}

fn traceparent(h: &HeaderMap) -> Option<String> {
    h.get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A fresh W3C trace context, for calls that start here.
fn new_traceparent() -> String {
    format!(
        "00-{:032x}-{:016x}-01",
        rand::random::<u128>(),
        rand::random::<u64>()
    )
}

fn id(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The router of the service `ctx` runs.
pub fn router(ctx: Arc<Ctx>) -> Router {
    let base = Router::new().route("/healthz", get(healthz));
    let r = match ctx.kind {
        Kind::TourCatalog => base
            .route("/tours", get(list_tours))
            .route("/tours/{id}", get(get_tour)),
        Kind::Notification => base
            .route("/notify", axum::routing::post(notify))
            .route("/notifications", get(list_records)),
        Kind::Payment => base.route("/charge", axum::routing::post(charge)),
        Kind::Booking => base.route("/bookings", get(list_records).post(book)),
        Kind::Frontend => base
            .route("/", get(page))
            .route("/api/tours", get(front_tours))
            .route("/api/bookings", get(front_bookings).post(front_book)),
    };
    r.with_state(ctx)
}

async fn healthz(State(ctx): State<Arc<Ctx>>) -> Json<Value> {
    Json(json!({"status": "ok", "served_by": ctx.served_by}))
}

/// The tours every catalog version knows.
const TOURS: &[(&str, &str, &str, u32, u32)] = &[
    ("lisbon-trams", "Lisbon by tram", "Lisbon", 1, 45),
    ("fjord-kayak", "Fjord kayaking", "Bergen", 2, 180),
    ("alps-hut", "Alpine hut to hut", "Chamonix", 4, 520),
    ("kyoto-temples", "Temples at dawn", "Kyoto", 1, 60),
    (
        "atacama-stars",
        "Stargazing in the Atacama",
        "San Pedro",
        3,
        390,
    ),
];

fn tour(ctx: &Ctx, i: usize) -> Value {
    let (id, name, city, days, price) = TOURS[i];
    let mut t = json!({"id": id, "name": name, "city": city, "days": days, "price_eur": price});
    if ctx.served_by.version == "v2" {
        // v2: spring prices (10% off) and ratings.
        t["price_eur"] = json!(price * 9 / 10);
        t["rating"] = json!(4.0 + (i as f64 % 3.0) * 0.4);
    }
    t
}

async fn list_tours(State(ctx): State<Arc<Ctx>>) -> Json<Value> {
    let tours: Vec<Value> = (0..TOURS.len()).map(|i| tour(&ctx, i)).collect();
    Json(json!({"tours": tours, "served_by": ctx.served_by}))
}

async fn get_tour(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let i = TOURS.iter().position(|t| t.0 == id).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no tour {id:?}")}),
        )
    })?;
    Ok(Json(
        json!({"tour": tour(&ctx, i), "served_by": ctx.served_by}),
    ))
}

async fn list_records(State(ctx): State<Arc<Ctx>>) -> Json<Value> {
    Json(json!({"items": ctx.records(), "served_by": ctx.served_by}))
}

fn text_field<'a>(body: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    match body[field].as_str() {
        Some(s) if !s.trim().is_empty() && s.len() <= 200 => Ok(s),
        _ => Err(bad_request(format!(
            "{field}: must be a non-empty string of at most 200 characters"
        ))),
    }
}

async fn notify(
    State(ctx): State<Arc<Ctx>>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let to = text_field(&body, "customer")?;
    let message = text_field(&body, "message")?;
    let n = json!({"notification_id": id("ntf"), "customer": to, "message": message, "booking_id": body["booking_id"], "served_by": ctx.served_by});
    ctx.keep(n.clone())
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e})))?;
    info!(site = %ctx.served_by.site, customer = to, "notification sent");
    Ok(Json(n))
}

async fn charge(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let customer = text_field(&body, "customer")?;
    let booking = text_field(&body, "booking_id")?;
    let amount = body["amount_eur"]
        .as_u64()
        .filter(|a| (1..=1_000_000).contains(a))
        .ok_or_else(|| bad_request("amount_eur: must be a whole number in 1..=1000000".into()))?;
    let payment_id = id("pay");
    let tp = traceparent(&headers);
    let notification = match ctx
        .egress()?
        .call(
            Method::POST,
            "notification",
            "/notify",
            Some(&json!({"customer": customer, "booking_id": booking, "message": format!("Payment of {amount} EUR received for booking {booking}")})),
            tp.as_deref(),
        )
        .await
    {
        Ok(v) => json!({"served_by": v["served_by"], "notification_id": v["notification_id"]}),
        Err(e) => {
            warn!(site = %ctx.served_by.site, error = %e, "notification failed; payment stands");
            json!({"error": e.to_string()})
        }
    };
    info!(site = %ctx.served_by.site, %payment_id, booking, amount, "payment approved");
    Ok(Json(json!({
        "payment_id": payment_id, "status": "approved", "amount_eur": amount,
        "served_by": ctx.served_by, "notification": notification,
    })))
}

/// A failed step of a booking: 502 when the callee answered badly, 503 when unreachable.
fn step_failed(step: &str, e: &CallError, steps: &[Value]) -> ApiError {
    let status = match e.status {
        Some(404) => StatusCode::NOT_FOUND,
        Some(400) => StatusCode::BAD_REQUEST,
        Some(_) => StatusCode::BAD_GATEWAY,
        None => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError(
        status,
        json!({"status": "failed", "failed_step": step, "error": e.to_string(), "steps": steps}),
    )
}

async fn book(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tour_id = text_field(&body, "tour_id")?;
    let customer = text_field(&body, "customer")?;
    let seats = body["seats"]
        .as_u64()
        .filter(|s| (1..=20).contains(s))
        .ok_or_else(|| bad_request("seats: must be a whole number in 1..=20".into()))?;
    let tp = traceparent(&headers).unwrap_or_else(new_traceparent);
    let egress = ctx.egress()?;
    let booking_id = id("bkg");
    let mut steps = vec![json!({"step": "booking", "served_by": ctx.served_by})];
    let t = egress
        .call(
            Method::GET,
            "tour-catalog",
            &format!("/tours/{tour_id}"),
            None,
            Some(&tp),
        )
        .await
        .map_err(|e| step_failed("tour-catalog", &e, &steps))?;
    steps.push(json!({"step": "tour-catalog", "served_by": t["served_by"]}));
    let price = t["tour"]["price_eur"].as_u64().unwrap_or(0);
    let amount = price * seats;
    let p = egress
        .call(
            Method::POST,
            "payment",
            "/charge",
            Some(&json!({"customer": customer, "booking_id": booking_id, "amount_eur": amount})),
            Some(&tp),
        )
        .await
        .map_err(|e| {
            warn!(site = %ctx.served_by.site, %booking_id, error = %e, "booking failed at payment");
            step_failed("payment", &e, &steps)
        })?;
    steps.push(
        json!({"step": "payment", "served_by": p["served_by"], "payment_id": p["payment_id"]}),
    );
    let n = &p["notification"];
    steps.push(match n.get("error") {
        Some(e) => json!({"step": "notification", "error": e}),
        None => json!({"step": "notification", "served_by": n["served_by"]}),
    });
    let record = json!({
        "booking_id": booking_id, "status": "confirmed", "tour": t["tour"], "customer": customer,
        "seats": seats, "amount_eur": amount, "steps": steps, "traceparent": tp,
    });
    ctx.keep(record.clone())
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e})))?;
    info!(site = %ctx.served_by.site, %booking_id, tour = tour_id, amount, "booking confirmed");
    Ok((StatusCode::CREATED, Json(record)))
}

const INDEX: &str = include_str!("../static/index.html");

async fn page(State(ctx): State<Arc<Ctx>>) -> Html<String> {
    Html(INDEX.replace("{{SITE}}", &ctx.served_by.site))
}

/// Passes a call on to `service`; answers `ok` with the callee's JSON, or the callee's status
/// and error.
async fn relay(
    ctx: &Ctx,
    (method, service, path): (Method, &str, &str),
    body: Option<&Value>,
    headers: &HeaderMap,
    ok: StatusCode,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tp = traceparent(headers).unwrap_or_else(new_traceparent);
    match ctx
        .egress()?
        .call(method, service, path, body, Some(&tp))
        .await
    {
        Ok(v) => Ok((ok, Json(v))),
        Err(e) => {
            let status = e
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            Err(ApiError(
                status,
                json!({"error": e.to_string(), "service": service}),
            ))
        }
    }
}

async fn front_tours(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let call = (Method::GET, "tour-catalog", "/tours");
    relay(&ctx, call, None, &headers, StatusCode::OK).await
}

async fn front_bookings(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let call = (Method::GET, "booking", "/bookings");
    relay(&ctx, call, None, &headers, StatusCode::OK).await
}

async fn front_book(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let call = (Method::POST, "booking", "/bookings");
    relay(&ctx, call, Some(&body), &headers, StatusCode::CREATED).await
}
