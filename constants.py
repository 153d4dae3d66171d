"""Every tunable of the trading system, in one place.

Each value carries a one-line comment with its unit. Values that a person would expect to set
from the environment are read through ``config.py`` (``TRADING_MODE``, ``TRADING_HOME``,
``DATA_SOURCE`` and a few more, named below); everything else is changed here.
Paths are relative to ``TRADING_HOME`` (see ``config.path``).

Grouped by topic, in the order data flows: environment, files, logging, data, model, signals,
drift, risk, execution, costs, Schwab, backtest and go-live gate, audit trail, credentials.
Every constant here is read by the code. The last section names each one either a strategy tunable
(``STRATEGY_TUNABLES``: it changes what the strategy trades or what it costs, so changing it makes
earlier walk-forward evidence stale) or an operational one (``OPERATIONAL_TUNABLES``).
"""

# ----------------------------------------------------------- environment (read through config.py)
ENV_TRADING_MODE = "TRADING_MODE"          # "paper" (default, also when unset) or "live"
ENV_TRADING_HOME = "TRADING_HOME"          # root of all state; default: the project directory
ENV_DATA_SOURCE = "DATA_SOURCE"            # "yfinance" (default), "sample" (offline generator) or "csv" (your files)
ENV_CREDENTIAL_KEY = "TRADING_CREDENTIAL_KEY"   # Fernet key injected by a secrets manager (optional)
ENV_CREDENTIAL_KEY_NEW = "TRADING_CREDENTIAL_KEY_NEW"   # new Fernet key for rotate-key when keys come from the environment
ENV_CONFIG_DIR = "TRADING_CONFIG_DIR"      # where keys live; default ~/.config/lstm-trader
ENV_TRADING_NOW = "TRADING_NOW"            # pins clock.now() to an ISO time with offset (tests, paper drills; refused in live mode)
ENV_TRAIN_PROFILE = "TRAIN_PROFILE"        # "tiny" selects the fast profile (same as --profile tiny)
ENV_CRONTAB_FILE = "TRADING_CRONTAB_FILE"  # install_cron.sh edits this file instead of the user's crontab (tests)
ENV_ALERT_URLS = "TRADING_ALERT_URLS"      # space-separated apprise URLs, used instead of the stored ones
ENV_CSV_DIR = "TRADING_CSV_DIR"            # folder of <SYMBOL>.csv files for DATA_SOURCE=csv
ENV_SETTING_PREFIX = "TRADING_SET_"        # TRADING_SET_<NAME>=value overrides the tunable <NAME> (tunables.py)
ENV_RAY_ADDRESS = "RAY_ADDRESS"            # an existing Ray cluster for the walk-forward's folds
ENV_XDG_CONFIG_HOME = "XDG_CONFIG_HOME"    # base of the default TRADING_CONFIG_DIR (~/.config when unset)
ENV_PYTHON = "TRADING_PYTHON"              # the run_*.sh scripts use this interpreter instead of .venv (tests)
ENV_FAILPOINT = "TRADING_FAILPOINT"        # names a crash point for fault-injection tests (failpoints.py)
TRADING_MODES = ("paper", "live")          # the only accepted values of TRADING_MODE
DEFAULT_TRADING_MODE = "paper"             # used when TRADING_MODE is unset
DATA_SOURCES = ("yfinance", "sample", "csv")   # the only accepted values of DATA_SOURCE
DEFAULT_DATA_SOURCE = "yfinance"           # used when DATA_SOURCE is unset
APP_NAME = "lstm-trader"                   # name of the key directory under ~/.config

# --------------------------------------------------------------------- files (under TRADING_HOME)
UNIVERSE_FILE = "selected_stocks.txt"                  # one ticker a line
PROCESSED_DATA_FILE = "processed_stock_data.csv"       # features, long format, zero NaN
RAW_PRICES_FILE = "data/raw_prices.csv"                # downloaded OHLCV as traded (unadjusted), long format
ACTIONS_FILE = "data/corporate_actions.csv"            # splits and cash dividends per symbol (corporate_actions.py)
REFUSED_SYMBOLS_FILE = "data/refused_symbols.json"     # the symbols the last data update refused, and why
CSV_ACTIONS_FILE = "corporate_actions.csv"             # optional actions file in TRADING_CSV_DIR (DATA_SOURCE=csv)
MODEL_FILE = "lstm_price_difference_model.h5"          # the trained Keras model (HDF5)
MODEL_METADATA_FILE = "lstm_price_difference_model.json"   # metadata beside the model
MODEL_BACKUP_DIR = "models/backups"                    # replaced models and their metadata
MODEL_QUARANTINE_DIR = "models/quarantine"  # current models that failed verification when replaced
MODEL_SHADOW_DIR = "models/shadow"          # the shadow model: trained, passed validation, not trading yet
MODEL_CANDIDATE_DIR = "models/candidates"   # trained models that failed validation (kept, never used)
STATE_DB_FILE = "state/trading_state.db"               # SQLite: orders, positions, breaker, ...
REPLAY_STATE_DB_FILE = "state/replay_state.db"   # throwaway state (paper account, orders, ...) of --as-of replays
LOG_DIR = "logs"                                       # all logs
AUDIT_LOG_FILE = "logs/audit/audit_log.jsonl"          # hash-chained audit trail
TRIAL_REGISTRY_FILE = "logs/audit/trial_registry.db"   # SQLite: every evaluation run counted (trial_registry.py); beside the audit trail, so a new state database does not reset it
REPORTS_DIR = "reports"                                # backtest reports
LOCK_DIR = "state/locks"                               # process locks (one cycle at a time)
SETTINGS_FILE = "settings.toml"                        # optional overrides of these tunables (tunables.py, docs/RUNBOOK.md)
# a TRADING_HOME holding none of these (nor a credential file) holds no project state: every command but the set-up ones
# (data update, training, credentials, alerts, cron, `live_trading.py init`) refuses it (config.home_problem)
HOME_STATE_FILES = (UNIVERSE_FILE, PROCESSED_DATA_FILE, MODEL_FILE, STATE_DB_FILE, AUDIT_LOG_FILE, SETTINGS_FILE)

# --------------------------------------------------------------------- logging (logging_setup.py)
LOG_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"   # greppable plain lines
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"      # local time of the machine
ERRORS_LOG_NAME = "errors.log"             # every ERROR/CRITICAL of every component

# --------------------------------------------- data: download and validation (data_collection.py)
HISTORY_START = "2018-01-01"               # first date fetched on a fresh download (YYYY-MM-DD)
CSV_DIR = "data/csv"                       # default of TRADING_CSV_DIR, under TRADING_HOME
DOWNLOAD_DEADLINE_S = 120.0                # overall deadline for one batched download (seconds)
DOWNLOAD_TIMEOUT_S = 10.0                  # per-request timeout passed to yfinance (seconds)
DOWNLOAD_RETRIES = 3                       # extra attempts for rate-limited symbols (count)
DOWNLOAD_BACKOFF_S = 5.0                   # first backoff; doubles on each retry (seconds)
INCREMENTAL_OVERLAP_DAYS = 5               # days re-fetched before the last stored date (days)
STALE_AFTER_SESSIONS = 3                   # a symbol whose last bar is older is stale (NYSE sessions)
MAX_MISSING_SESSIONS_FRACTION = 0.02       # tolerated share of missing NYSE sessions (fraction)
SYNTHETIC_OPEN_MAX_SHARE = 0.5             # above this share of rows with Open == previous Close the opens are synthetic: next-open fills refused (fraction)
MAX_DAILY_MOVE = 0.40                      # |close-to-close change| of the split-adjusted close above this is refused (fraction)
MAX_PRICE = 1_000_000.0                    # a price above this is absurd (USD)
FRESH_FILE_HOURS = 12.0                    # a processed file younger than this is not rebuilt (hours)
MIN_HISTORY_ROWS = 60                      # fewer raw rows than this: the symbol is unusable (rows)

# ------------------------------------------------ data: features (data_collection.build_features)
PRICE_COLUMNS = ("Open", "High", "Low", "Close", "Volume")   # a raw price bar (every source gives these)
RAW_COLUMNS = ("Date", "Symbol") + PRICE_COLUMNS               # the raw price frame, long format
FEATURE_VOL_WINDOW = 20                    # rolling window for volatility and averages (sessions)
FEATURE_RSI_WINDOW = 14                    # RSI window (sessions)
FEATURE_COLUMNS = (                        # model inputs, all scale-free
    "log_return", "gap", "intraday_return", "range", "volatility_20",
    "sma_ratio_20", "rsi_14", "volume_ratio_20",
)

# -------------------------------------- data: offline sample (DATA_SOURCE=sample, sample_data.py)
SAMPLE_START = "2019-01-02"                # first sample session (YYYY-MM-DD)
SAMPLE_END = "2025-10-31"                  # last sample session (YYYY-MM-DD)
SAMPLE_SEED = 20260131                     # seed of the deterministic generator
SAMPLE_LABEL = "SYNTHETIC sample prices, not market data"   # shown wherever DATA_SOURCE=sample prices appear
SAMPLE_AR_COEF = 0.3                       # the documented predictable component: AR(1) coefficient of daily returns

# ------------- model: architecture, targets and training (model_training.py, model_management.py)
WINDOW_LENGTH = 20                         # sessions of features fed to the LSTM (sessions)
LSTM_LAYERS = 1                            # stacked LSTM layers (count)
LSTM_UNITS = 32                            # LSTM layer width (units)
DENSE_UNITS = 16                           # dense layer width (units)
TARGET_VOL_FLOOR = 1e-4                    # volatility_20 floor in the target scaling (daily log-return std)
TARGET_CLIP = 8.0                          # training targets clipped to +/- this (vol-scaled units); metrics use unclipped
FEATURE_CLIP = 10.0                        # standardized inputs clipped to +/- this (standard deviations)
TRAIN_EPOCHS = 30                          # upper bound; early stopping usually ends sooner (epochs)
TRAIN_BATCH_SIZE = 256                     # samples per gradient step
TRAIN_LEARNING_RATE = 1e-3                 # Adam learning rate
TRAIN_PATIENCE = 5                         # early-stopping patience (epochs)
TRAIN_SEED = 42                            # seed for NumPy, Python and TensorFlow
VALIDATION_FRACTION = 0.15                 # share of sessions for validation (chronological)
TEST_FRACTION = 0.15                       # share of sessions for the final test (chronological)
MIN_SYMBOL_ROWS = 120                      # a symbol with fewer feature rows is skipped (rows)
PROMOTION_TOLERANCE = 0.0                  # new model promoted if test MSE <= old * (1 + this)
INFERENCE_PARITY_TOL = 1e-4                # max |Keras - NumPy| on the scaled output before a model is saved
MODEL_BACKUPS_KEEP = 10                    # backups kept by `model_management.py prune` default
PROMOTION_ALPHA = 0.05                     # validation skill vs no change must be significant: DM p-value below this
SHADOW_MIN_SESSIONS = 20                   # sessions with outcomes a shadow model runs beside the live one (sessions)
SHADOW_ALPHA = 0.05                        # shadow rejected when the live model beats it with DM p-value below this

# ------------------- model: the tiny profile (--profile tiny, TRAIN_PROFILE=tiny: demo and tests)
TINY_WINDOW = 10                           # --profile tiny: window (sessions)
TINY_UNITS = 8                             # --profile tiny: LSTM units
TINY_DENSE_UNITS = 8                       # --profile tiny: dense units
TINY_EPOCHS = 10                           # --profile tiny: max epochs
TINY_PATIENCE = 3                          # --profile tiny: early-stopping patience (epochs)

# --------------------------------------------------------------------------- signals (signals.py)
SIGNAL_THRESHOLD = 0.6                     # |score| needed to trade; score = predicted diff / (close * recent daily vol), unitless (0.5-0.7)
MAX_ABS_SCORE = 10.0                       # a |score| above this is nonsensical: the cycle stops (unitless)
MAX_PRED_MOVE = 0.5                        # a predicted |diff| above this fraction of the close is absurd
DATA_MAX_AGE_SESSIONS = 0                  # sessions the data may lag the last completed session (sessions)

# ------------------------------------------------------------ drift monitoring (drift_monitor.py)
DRIFT_MIN_SAMPLES = 50                     # realised predictions needed before judging drift (count)
DRIFT_LOOKBACK_DAYS = 30                   # window of realised predictions judged (calendar days)
DRIFT_LOW = 0.15                           # degradation of MSE/accuracy vs training: LOW from (fraction)
DRIFT_MEDIUM = 0.25                        # MEDIUM from (fraction)
DRIFT_HIGH = 0.40                          # HIGH from (fraction)
DRIFT_CRITICAL = 0.60                      # CRITICAL from (fraction); trading stops
DRIFT_ALERT_LOG_DAYS = 7                   # the health check and status page look for DRIFT ALERT in this many newest trading logs (count)

# -------------------------------------------- risk: limits, sizing and halts (risk_management.py)
MAX_POSITION_PCT = 0.10                    # max position value per symbol (fraction of equity)
MAX_GROSS_EXPOSURE = 1.0                   # max sum of |position values| (fraction of equity)
MAX_POSITIONS = 10                         # max number of open positions (count)
MAX_ORDER_VALUE = 25_000.0                 # max value of one order (USD)
PRICE_SANITY_PCT = 0.10                    # order price may differ from last close by at most (fraction)
RISK_PER_TRADE = 0.01                      # equity risked per position per daily sigma (fraction)
MAX_SIZE_SCALE = 2.0                       # sizing scale |score|/SIGNAL_THRESHOLD is capped at (multiple)
REBALANCE_BAND = 0.10                      # same-side target within this of the current size is not traded (fraction of position)
MAX_DRAWDOWN = 0.15                        # halt opening positions past this drop from peak (fraction)
DAILY_LOSS_LIMIT = 0.05                    # halt for the day past this loss since the day's start (fraction)

# ------------------------------------------------------------------- risk: shorts (short_rules.py)
ALLOW_SHORTS = True                        # whether SELL signals open short positions
MAX_BORROW_RATE = 0.20                     # no new short above this annual borrow rate (fraction, 20 %)
REQUIRE_BORROW_DATA = True                 # a new short needs a known borrow rate or shortable/HTB flag (bool)
EX_DIVIDEND_WINDOW_DAYS = 3                # no short / close short within this many days of ex-div (days)
FORCED_BUYIN_LIMIT = 2                     # forced buy-ins before a symbol goes on the do-not-short list
FORCED_BUYIN_LOOKBACK_DAYS = 90            # window counted for FORCED_BUYIN_LIMIT (days)

# ----------- execution: orders, retries, circuit breaker (trading_execution.py, broker_gateway.py)
ORDER_RETRIES = 3                          # extra attempts for transient broker errors (count)
ORDER_BACKOFF_S = 1.0                      # first retry backoff, doubling (seconds)
BROKER_RETRY_DEADLINE_S = 60.0             # no retry of a broker call starts later than this after its first attempt (seconds)
ORDER_FILL_TIMEOUT_S = 120.0               # unfilled orders are cancelled after (seconds)
FLATTEN_LOCK_WAIT_S = 120.0                # flatten waits this long for a running cycle to finish (seconds)
ORDER_POLL_INTERVAL_S = 2.0                # fill polling interval (seconds)
ORDER_SNAPSHOT_LOOKBACK_S = 86_400.0       # broker orders listed before each submission reach back (seconds; recovery lists the same window)
ORDER_ADOPT_MAX_DELAY_S = 300.0            # a lone recovery candidate entered later than this after the snapshot (broker clock) is named "may be someone else's" (seconds; every lone candidate not certainly ours goes to a person)
CLOCK_MAX_SKEW_S = 120.0                   # a cycle stops before any order when our clock and the broker's (Schwab's HTTP Date) differ by more, or our clock is this far before the last cycle's end (seconds; NTP keeps a machine within a second)
HALT_CANCELS_UNFILLED = True               # a kill switch set mid-cycle cancels the cycle's unfilled orders (bool)
MAX_ORDERS_PER_MINUTE = 120                # Schwab's recommended ceiling (requests per minute)
CIRCUIT_BREAKER_FAILURES = 5               # consecutive failures that open the breaker (count)
CIRCUIT_BREAKER_RECOVERY_S = 60.0          # open -> half-open after (seconds)
RECONCILE_LOOKBACK_DAYS = 3                # the reconciliation lists broker transactions from this long before its last run (days; already-seen ones are skipped)
RECONCILE_CASH_TOLERANCE = 0.01            # a cash difference from the broker within this is not a break (USD)

# ------------------------ costs and the paper account (the cost model: paper broker and backtest)
INITIAL_PAPER_CASH = 100_000.0             # starting cash of the paper account (USD)
PAPER_FILL = "next_open"                   # paper market orders decided from a close fill at the next session's open ("next_open") or at once at the close ("close": tests of broker mechanics)
PAPER_OPENS_SESSIONS = 20                  # opens of this many recent sessions given to the paper broker at each price sync (sessions)
PAPER_SLIPPAGE_BPS = 5.0                   # paper fills worse than the reference price by (basis points)
PAPER_COMMISSION_PER_SHARE = 0.0           # paper commission (USD per share)
PAPER_MIN_COMMISSION = 0.0                 # paper minimum commission per order (USD)
DEFAULT_BORROW_RATE = 0.005                # paper broker's borrow rate when the table has none (annual)
BORROW_DAY_COUNT = 360                     # borrow fees accrue ACT/360: qty*price*rate*days/360 (days per year)
PAPER_SHORT_MARGIN_REQ = 1.5               # paper buying power = cash - this * short market value (Reg T 150 %)
PAPER_ACCOUNT_TYPE = "MARGIN"              # the paper account's type: "MARGIN" or "CASH" (buys from settled cash only, T+1; no shorts; settlement.py)

# ----------------- protective stops and price collars (order_prices.py: live, paper and backtest)
PROTECTIVE_STOPS = False                   # a GTC stop for the whole position rests at the broker after an entry fills (bool; the rule is in order_prices.py; live (Schwab and paper) and the backtest alike; off by default until the suite and the go-live evidence are redone with it on: docs/BROKERS.md)
STOP_VOL_MULTIPLE = 3.0                    # stop distance = this * the 20-day volatility of daily returns * the reference price (multiple)
STOP_VOL_WINDOW = 20                       # sessions of daily returns behind the stop's volatility (sessions)
STOP_MIN_DISTANCE = 0.02                   # the stop is never nearer than this fraction of the reference price (fraction, 2 %)
ORDER_TYPE = "market"                      # entries and exits: marketable limit orders inside a collar ("limit_collar") or plain market orders ("market"); live, paper and the backtest alike; flatten always sends market orders; "market" by default until the suite and the evidence are redone with collars
PRICE_COLLAR_BPS = 50.0                    # a collared limit = reference price +/- this (basis points; a gap beyond it is no fill)
PRICE_TICK = 0.01                          # limit and stop prices are rounded to this tick (USD; 0.01 for stocks at or above 1 USD)

# ----------------------------------------------------------------------- Schwab (the live broker)
BROKER_HTTP_TIMEOUT_S = 20.0               # timeout of one Schwab HTTP request (seconds)
TOKEN_WARN_AGE_DAYS = 6.0                  # warn when the Schwab refresh token is this old (days)
TOKEN_MAX_AGE_DAYS = 7.0                   # refuse to run at this token age (days)
SCHWAB_CALLBACK_URL = "https://127.0.0.1:8182"   # callback registered with the Schwab app
SCHWAB_HTB_RATE_DIVISOR = 1.0              # Schwab reference.htbRate / this = annual fraction (1.0: read as fraction; conservative)
SCHWAB_ORDER_LOOKBACK_DAYS = 59            # Schwab order queries reach back at most this far (days; API limit 60)
SCHWAB_ORDER_QUERY_AHEAD_S = 86_400.0      # Schwab order queries end this far after the latest of our clock, Schwab's last Date and the recorded send time (seconds)
SCHWAB_QUOTE_BATCH = 100                   # symbols per Schwab quotes request (count)

# ---------------------------------------------------------------------- backtest and go-live gate
BACKTEST_FILL = "next_open"                # signals after day t's close fill at t+1's open
BACKTEST_MAX_DAY_SPAN = 200_000            # backtest arrays index dates through a day lookup table up to this span (calendar days, ~550 years; wider takes the slower hashing path)
TRADING_DAYS_PER_YEAR = 252                # annualisation (sessions per year)
# Risk-free rate of every Sharpe-type figure (backtest Sharpe/Sortino, the walk-forward's Sharpe,
# PSR/DSR): 3-month US Treasury bill, secondary market (FRED series DTB3), 4-5 % a year in 2024-2025
# and about 1.8 % on average over 2000-2024 (annual averages, rounded); we take 0.02, the conservative middle: a strategy must
# beat cash, not zero.
RISK_FREE_RATE = 0.02                      # annual risk-free rate (fraction a year)
BACKTEST_CASH_INTEREST = True              # the backtest's free cash (cash less short proceeds) earns RISK_FREE_RATE / TRADING_DAYS_PER_YEAR a session: the rate every Sharpe subtracts
GOLIVE_MIN_TOTAL_RETURN = 0.0              # backtest total return must exceed (fraction)
GOLIVE_MIN_SHARPE = 0.5                    # backtest Sharpe must be at least (annualised)
GOLIVE_MAX_DRAWDOWN = 0.20                 # backtest max drawdown must be at most (fraction)
GOLIVE_MIN_TRADES = 30                     # backtest must have at least (closed round trips; open ones do not count)
GOLIVE_MIN_PAPER_SESSIONS = 5              # paper sessions with the current model before live (count)
GOLIVE_WALK_FORWARD_MAX_AGE_DAYS = 14      # a backtest or walk-forward counts while its window ends at most this many calendar days before the production data's last session (two weekly runs; evidence_binding.py)

# ----------------------------------------------------------------- audit trail (audit_logging.py)
AUDIT_KEY_FILE = "audit_hmac.key"          # HMAC-SHA256 key of the audit chain, in config.config_dir() (mode 0600)
AUDIT_CHECKPOINT_FILE = "audit_checkpoint-{tag}.json"   # last seq/hash, in config.config_dir(); tag = digest of the log's path
AUDIT_LOCK_FILE = ".audit_log.lock"        # flock file beside the audit log (in logs/audit/)
AUDIT_TRAIL_ID_FILE = "audit_trail_id"     # the trail's random id, beside the audit log; names its checkpoint (tag = the id), so a moved home keeps it
AUDIT_TRAIL_ID_BYTES = 8                   # random bytes of a new trail id (16 hex digits)
AUDIT_CHECKPOINT_FSYNC = False             # fdatasync the checkpoint on each append too (True halves appends/s; the log line is always fsynced)

# ------------------------------------------------------------ credentials (credential_manager.py)
CREDENTIAL_KEY_FILE = "credentials.key"    # Fernet key of the credential files, in config.config_dir() (mode 0600)
CREDENTIAL_NEXT_KEY_FILE = "credentials.key.next"   # new key while `credential_manager.py rotate-key` runs
CREDENTIAL_FILE_TEMPLATE = ".{service}_config.enc"     # encrypted credentials under TRADING_HOME (mode 0600)

# --------------- operator's view: the status page and reports (status_page.py, backtest_report.py)
STATUS_PAGE_FILE = "reports/status.html"   # the operator's status page (rebuilt by cycles and health checks)
STATUS_RECENT_ORDERS = 20                  # orders shown on the status page (count)
STATUS_RECENT_AUDIT = 15                   # audit records shown on the status page (count)
STATUS_RECENT_TRIPS = 20                   # round trips shown on the status page (count)
STATUS_SERVE_HOST = "127.0.0.1"            # `serve` binds here only (read-only page)
STATUS_SERVE_PORT = 8765                   # default port of `serve` (TCP port)
REPORT_SHORT_PERIOD_SESSIONS = 252         # a backtest verdict on one period shorter than this gets a warning (sessions)
REPORT_MIN_TRADES_NOTE = 30                # ... or on fewer round trips than this (count)
REPORT_MAX_TRIPS_SHOWN = 500               # round trips listed in the backtest report's table (count; the JSON has all)

# -------------------------------------------------------- schedule (scheduler.py, cron_install.py)
SCHEDULER_LOCK_FILE = "state/locks/scheduler.lock"   # flock: one scheduler run (one job) at a time
SCHEDULE_INTERVAL_MIN = 5                  # cron starts ./run_scheduled.sh this often (minutes)
HEALTH_CHECK_BEFORE_OPEN_MIN = 60          # health check due this long before the open (minutes)
CYCLE_AFTER_OPEN_MIN = 5                   # trading cycle due this long after the open (minutes)
DATA_UPDATE_AFTER_CLOSE_MIN = 15           # data update due this long after the close, early closes too (minutes)
AUDIT_ROTATE_AFTER_CLOSE_MIN = 45          # audit rotation due this long after the close (minutes)
LOG_RETENTION_AFTER_CLOSE_MIN = 50         # log retention due this long after the close (minutes)
RETRAIN_AFTER_CLOSE_MIN = 60               # weekly retrain: after the week's last close (minutes)
WALK_FORWARD_AFTER_CLOSE_MIN = 75          # weekly walk-forward: after the week's last close (minutes)
HEALTH_CHECK_CATCHUP_MIN = 120             # a missed health check still runs within (minutes after due)
CYCLE_CATCHUP_MIN = 120                    # a missed trading cycle still runs within (minutes after due)
CYCLE_RERUNS = 3                           # a failed trading cycle is run again at most this often per session, within its window (count)
CYCLE_RERUN_SPACING_MIN = 10               # ... each rerun this long after the failed run ended (minutes)
AFTER_CLOSE_CATCHUP_MIN = 360              # data update, rotation, retention still run within (minutes after due)
WEEKLY_CATCHUP_MIN = 360                   # weekly retrain / walk-forward still run within (minutes after due)
SCHEDULE_MISSED_LOOKBACK_DAYS = 7          # windows this recent that passed unrun raise a "missed" alert (days)
JOB_TIMEOUT_MIN = 60                       # a job running longer is killed and counts as failed (minutes)
LONG_JOB_TIMEOUT_MIN = 360                 # the same for retrain and walk-forward (minutes)
CRON_MARKER = "lstm-trader schedule"       # text of the BEGIN/END comments around the project's crontab block

# --------------------------------------------------- log rotation and retention (log_retention.py)
LOG_RETENTION_DAYS = 60                    # daily logs and rotated errors/cron logs older than this are deleted (days)
LOG_ROTATE_AGE_DAYS = 7                    # errors.log / cron_trading.log rotated when their first line is older (days)
LOG_ROTATE_MAX_BYTES = 10_000_000          # ... or when larger than this (bytes)

# ------------------------------------------------------------------------------ alerts (alerts.py)
ALERT_CREDENTIAL_SERVICE = "alerts"        # credential service holding the stored apprise URLs
ALERT_QUIET_PERIOD_MIN = 240               # the same alert (kind + key) is not repeated within (minutes)
ALERT_ORDER_REJECTIONS = 3                 # order rejections in one cycle that raise an alert (count)
ALERT_TOKEN_EXPIRY_HOURS = 24              # alert when the Schwab token expires within (hours)

# ------------------------------------------------------ control from the phone (telegram_control.py)
TELEGRAM_CREDENTIAL_SERVICE = "telegram"   # credential service: bot_token, chat_ids (the alerts' Telegram channel too)
TELEGRAM_API_URL = "https://api.telegram.org"   # the Bot API's base URL (a local fake in tests)
TELEGRAM_POLL_TIMEOUT_S = 50               # long-poll wait of one getUpdates (seconds; under a minute for cron)
TELEGRAM_FLATTEN_CODE_MIN = 5              # a /flatten confirmation code is valid this long (minutes)
TELEGRAM_RESUME_MAX_AGE_MIN = 10           # a /resume read later than this after it was sent is not run (minutes)
TELEGRAM_RETRY_PAUSE_S = 30                # `serve` waits this long after the Bot API failed (seconds)
TELEGRAM_MESSAGE_LIMIT = 4000              # a reply is cut to this many characters (Telegram's limit is 4096)
TELEGRAM_LOCK_FILE = "state/locks/telegram.lock"   # flock: one poller at a time

# ------------------------------ evidence: walk-forward and skill (walk_forward.py, skill_stats.py)
WALK_FORWARD_MIN_TRAIN_SESSIONS = 504      # first fold trains on at least this much history (sessions; 2 years)
WALK_FORWARD_RETRAIN_SESSIONS = 63         # retrain every this many sessions; a fold predicts that many (sessions; a quarter)
SKILL_ALPHA = 0.05                         # one-sided significance level of the Diebold-Mariano skill tests
SKILL_MIN_DSR = 0.95                       # deflated Sharpe ratio of strategy-minus-benchmark returns needed to pass
SKILL_HAC_LAG = None                       # Newey-West lag (sessions); None: floor(4 * (n / 100) ** (2 / 9))
HOLDOUT_SESSIONS = 252                     # newest sessions sealed from every walk-forward and sweep, opened once per configuration by `walk_forward.py holdout` (sessions; 0: none)
PBO_MAX = 0.5                              # probability of backtest overfitting (CSCV) the gate accepts at most (probability)
PBO_MIN_TRIALS = 4                         # the PBO ceiling applies once a universe has this many trials with out-of-sample returns (count)
PBO_BLOCKS = 16                            # CSCV blocks of the PBO (even count; C(16, 8) = 12870 splits)
SWEEP_GRID = "retrain=63,126;threshold=0.5,0.7"   # default grid of `walk_forward.py sweep`: key=v1,v2 joined by ';' (keys: retrain, window, threshold, profile)

# ---------------------- sentiment: Reddit mentions and VADER scores (reddit_sentiment.py, sentiment_store.py)
REDDIT_SENTIMENT = False                   # the sentiment columns enter the model (features, training, live, backtest); off by default
SENTIMENT_COLUMNS = ("reddit_mention_z", "reddit_compound")   # the optional model inputs (sentiment_store.sentiment_features)
REDDIT_SUBREDDITS = "wallstreetbets stocks investing StockMarket"   # subreddits read, separated by spaces
REDDIT_POSTS_PER_SUBREDDIT = 200           # newest posts read per subreddit per collection (items; Reddit lists at most 1000)
REDDIT_COMMENTS_PER_SUBREDDIT = 500        # newest comments read per subreddit per collection (items)
REDDIT_LOOKBACK_HOURS = 24                 # only posts and comments created this long before the collection count (hours)
REDDIT_TICKER_BLACKLIST = (                # words never read as tickers (upper case, separated by spaces)
    "A I ALL AM AN AND ANY ARE AS AT BE BIG BY CAN CEO CFO CEOS DD DO EPS ETF FOR FOMO GO HAS HE HOLD "
    "IF IMO IN IPO IS IT ITM LOL MOON NEW NO NOW OF OK ON ONE OR OTM OUT PM RH SEC SO THE TO UP US USA "
    "USD WSB YOLO ATH ATM EV GDP CPI FED IRS TLDR EDIT")
REDDIT_VADER_THRESHOLD = 0.05              # a text is positive at compound >= this, negative at <= -this (VADER's authors' cut)
REDDIT_MENTION_Z_WINDOW = 20               # mention z-score: against the symbol's last this many collections (collections)
REDDIT_MENTION_Z_MIN = 5                   # fewer earlier collections than this: the z-score is 0 (collections)
REDDIT_COLLECT = False                     # the scheduler records sentiment daily even while REDDIT_SENTIMENT is off (to measure it first)
REDDIT_COLLECT_BEFORE_CLOSE_MIN = 30       # the daily collection is due this long before the close (minutes)
REDDIT_COLLECT_CATCHUP_MIN = 25            # ... and may start this late (minutes; less than the above: it stays in the session)
REDDIT_TIMEOUT_S = 20                      # one HTTP request to Reddit (seconds; PRAW retries twice on a timeout)
REDDIT_CREDENTIAL_SERVICE = "reddit"       # credential service: client_id, client_secret, user_agent (.reddit_config.enc)
REDDIT_OAUTH_URL = "https://oauth.reddit.com"   # the API's base URL (a local fake in tests)
REDDIT_URL = "https://www.reddit.com"      # where the OAuth token is obtained (a local fake in tests)

# ====================================== which tunables are the strategy (walk_forward_runs.py reads this)
# Every constant above is named in exactly one of the two groups below (tests/test_walk_forward_runs.py
# checks it), so a new tunable cannot be added without deciding which it is.
# STRATEGY_TUNABLES change what the strategy trades or what it costs: the walk-forward's configuration
# fingerprint (walk_forward_runs.model_configuration) is computed from their names and values, so changing
# any of them makes earlier walk-forward evidence stale for the go-live gate (run ./run_backtest.sh
# --walk-forward again).
STRATEGY_TUNABLES = (
    # data validation: which bars and symbols are usable (price sanity)
    "STALE_AFTER_SESSIONS", "MAX_MISSING_SESSIONS_FRACTION", "SYNTHETIC_OPEN_MAX_SHARE", "MAX_DAILY_MOVE", "MAX_PRICE", "MIN_HISTORY_ROWS",
    # features
    "FEATURE_VOL_WINDOW", "FEATURE_RSI_WINDOW", "FEATURE_COLUMNS",
    # model: architecture, targets, training (the tiny profile too)
    "WINDOW_LENGTH", "LSTM_LAYERS", "LSTM_UNITS", "DENSE_UNITS", "TARGET_VOL_FLOOR", "TARGET_CLIP",
    "FEATURE_CLIP", "TRAIN_EPOCHS", "TRAIN_BATCH_SIZE", "TRAIN_LEARNING_RATE", "TRAIN_PATIENCE",
    "VALIDATION_FRACTION", "TEST_FRACTION", "MIN_SYMBOL_ROWS",
    "TINY_WINDOW", "TINY_UNITS", "TINY_DENSE_UNITS", "TINY_EPOCHS", "TINY_PATIENCE",
    # signals and the sanity of predictions and data age
    "SIGNAL_THRESHOLD", "MAX_ABS_SCORE", "MAX_PRED_MOVE", "DATA_MAX_AGE_SESSIONS",
    # risk: limits, sizing, halts
    "MAX_POSITION_PCT", "MAX_GROSS_EXPOSURE", "MAX_POSITIONS", "MAX_ORDER_VALUE", "PRICE_SANITY_PCT",
    "RISK_PER_TRADE", "MAX_SIZE_SCALE", "REBALANCE_BAND", "MAX_DRAWDOWN", "DAILY_LOSS_LIMIT",
    # risk: shorts (borrow, ex-dividend, forced buy-ins)
    "ALLOW_SHORTS", "MAX_BORROW_RATE", "REQUIRE_BORROW_DATA", "EX_DIVIDEND_WINDOW_DAYS",
    "FORCED_BUYIN_LIMIT", "FORCED_BUYIN_LOOKBACK_DAYS", "SCHWAB_HTB_RATE_DIVISOR",
    # the cost model, the paper account and fills
    "INITIAL_PAPER_CASH", "PAPER_FILL", "PAPER_SLIPPAGE_BPS", "PAPER_COMMISSION_PER_SHARE",
    "PAPER_MIN_COMMISSION", "DEFAULT_BORROW_RATE", "BORROW_DAY_COUNT", "PAPER_SHORT_MARGIN_REQ", "BACKTEST_FILL",
    "BACKTEST_CASH_INTEREST",
    # protective stops and price collars (they change which fills the evidence books)
    "PROTECTIVE_STOPS", "STOP_VOL_MULTIPLE", "STOP_VOL_WINDOW", "STOP_MIN_DISTANCE", "ORDER_TYPE",
    "PRICE_COLLAR_BPS", "PRICE_TICK",
    # Reddit sentiment: whether and which sentiment features the model sees
    "REDDIT_SENTIMENT", "SENTIMENT_COLUMNS", "REDDIT_SUBREDDITS", "REDDIT_POSTS_PER_SUBREDDIT",
    "REDDIT_COMMENTS_PER_SUBREDDIT", "REDDIT_LOOKBACK_HOURS", "REDDIT_TICKER_BLACKLIST", "REDDIT_VADER_THRESHOLD",
    "REDDIT_MENTION_Z_WINDOW", "REDDIT_MENTION_Z_MIN",
)
# OPERATIONAL_TUNABLES do not change what the strategy trades or what it costs: the environment, files,
# logging, downloads, the sample generator (the data's hash is recorded apart), the training seed (evidence is
# of a configuration, whatever the seed), model housekeeping, drift monitoring (it stops trading, never
# changes a trade), order mechanics and retries, Schwab plumbing, the statistics and thresholds that judge
# the evidence, the audit trail, credentials, reports, the schedule, alerts and log retention.
OPERATIONAL_TUNABLES = (
    "ENV_TRADING_MODE", "ENV_TRADING_HOME", "ENV_DATA_SOURCE", "ENV_CREDENTIAL_KEY", "ENV_CREDENTIAL_KEY_NEW",
    "ENV_CONFIG_DIR", "ENV_TRADING_NOW", "ENV_TRAIN_PROFILE", "TRADING_MODES", "DEFAULT_TRADING_MODE", "DATA_SOURCES",
    "DEFAULT_DATA_SOURCE", "APP_NAME",
    "UNIVERSE_FILE", "PROCESSED_DATA_FILE", "RAW_PRICES_FILE", "ACTIONS_FILE", "REFUSED_SYMBOLS_FILE",
    "CSV_ACTIONS_FILE", "MODEL_FILE", "MODEL_METADATA_FILE",
    "MODEL_BACKUP_DIR", "MODEL_QUARANTINE_DIR", "STATE_DB_FILE", "LOG_DIR", "AUDIT_LOG_FILE", "REPORTS_DIR",
    "LOCK_DIR", "HOME_STATE_FILES",
    "LOG_FORMAT", "LOG_DATE_FORMAT", "ERRORS_LOG_NAME",
    "HISTORY_START", "DOWNLOAD_DEADLINE_S", "DOWNLOAD_TIMEOUT_S", "DOWNLOAD_RETRIES", "DOWNLOAD_BACKOFF_S",
    "INCREMENTAL_OVERLAP_DAYS", "FRESH_FILE_HOURS", "PRICE_COLUMNS", "RAW_COLUMNS",
    "SAMPLE_START", "SAMPLE_END", "SAMPLE_SEED", "SAMPLE_LABEL", "SAMPLE_AR_COEF",
    "TRAIN_SEED", "PROMOTION_TOLERANCE", "INFERENCE_PARITY_TOL", "MODEL_BACKUPS_KEEP",
    "MODEL_SHADOW_DIR", "MODEL_CANDIDATE_DIR", "PROMOTION_ALPHA", "SHADOW_MIN_SESSIONS", "SHADOW_ALPHA",
    "DRIFT_MIN_SAMPLES", "DRIFT_LOOKBACK_DAYS", "DRIFT_LOW", "DRIFT_MEDIUM", "DRIFT_HIGH", "DRIFT_CRITICAL",
    "DRIFT_ALERT_LOG_DAYS",
    "ORDER_RETRIES", "ORDER_BACKOFF_S", "BROKER_RETRY_DEADLINE_S", "ORDER_FILL_TIMEOUT_S", "FLATTEN_LOCK_WAIT_S", "ORDER_POLL_INTERVAL_S",
    "ORDER_SNAPSHOT_LOOKBACK_S", "ORDER_ADOPT_MAX_DELAY_S", "CLOCK_MAX_SKEW_S", "HALT_CANCELS_UNFILLED", "MAX_ORDERS_PER_MINUTE",
    "CIRCUIT_BREAKER_FAILURES", "CIRCUIT_BREAKER_RECOVERY_S", "PAPER_OPENS_SESSIONS", "PAPER_ACCOUNT_TYPE",
    "RECONCILE_LOOKBACK_DAYS", "RECONCILE_CASH_TOLERANCE",
    "BROKER_HTTP_TIMEOUT_S", "TOKEN_WARN_AGE_DAYS", "TOKEN_MAX_AGE_DAYS", "SCHWAB_CALLBACK_URL",
    "SCHWAB_ORDER_LOOKBACK_DAYS", "SCHWAB_ORDER_QUERY_AHEAD_S", "SCHWAB_QUOTE_BATCH",
    "BACKTEST_MAX_DAY_SPAN", "TRADING_DAYS_PER_YEAR", "RISK_FREE_RATE", "GOLIVE_MIN_TOTAL_RETURN",
    "GOLIVE_MIN_SHARPE", "GOLIVE_MAX_DRAWDOWN", "GOLIVE_MIN_TRADES", "GOLIVE_MIN_PAPER_SESSIONS",
    "GOLIVE_WALK_FORWARD_MAX_AGE_DAYS", "WALK_FORWARD_MIN_TRAIN_SESSIONS", "WALK_FORWARD_RETRAIN_SESSIONS",
    "SKILL_ALPHA", "SKILL_MIN_DSR", "SKILL_HAC_LAG",
    "TRIAL_REGISTRY_FILE", "HOLDOUT_SESSIONS", "PBO_MAX", "PBO_MIN_TRIALS", "PBO_BLOCKS", "SWEEP_GRID",
    "AUDIT_KEY_FILE", "AUDIT_CHECKPOINT_FILE", "AUDIT_LOCK_FILE", "AUDIT_TRAIL_ID_FILE", "AUDIT_TRAIL_ID_BYTES",
    "AUDIT_CHECKPOINT_FSYNC",
    "CREDENTIAL_KEY_FILE", "CREDENTIAL_NEXT_KEY_FILE", "CREDENTIAL_FILE_TEMPLATE",
    "REPLAY_STATE_DB_FILE", "STATUS_PAGE_FILE", "STATUS_RECENT_ORDERS", "STATUS_RECENT_AUDIT",
    "STATUS_RECENT_TRIPS", "STATUS_SERVE_HOST", "STATUS_SERVE_PORT", "REPORT_SHORT_PERIOD_SESSIONS",
    "REPORT_MIN_TRADES_NOTE", "REPORT_MAX_TRIPS_SHOWN",
    "SCHEDULER_LOCK_FILE", "SCHEDULE_INTERVAL_MIN", "HEALTH_CHECK_BEFORE_OPEN_MIN", "CYCLE_AFTER_OPEN_MIN",
    "DATA_UPDATE_AFTER_CLOSE_MIN", "AUDIT_ROTATE_AFTER_CLOSE_MIN", "LOG_RETENTION_AFTER_CLOSE_MIN",
    "RETRAIN_AFTER_CLOSE_MIN", "WALK_FORWARD_AFTER_CLOSE_MIN", "HEALTH_CHECK_CATCHUP_MIN", "CYCLE_CATCHUP_MIN",
    "CYCLE_RERUNS", "CYCLE_RERUN_SPACING_MIN",
    "AFTER_CLOSE_CATCHUP_MIN", "WEEKLY_CATCHUP_MIN", "SCHEDULE_MISSED_LOOKBACK_DAYS", "JOB_TIMEOUT_MIN",
    "LONG_JOB_TIMEOUT_MIN", "ENV_CRONTAB_FILE", "CRON_MARKER",
    "LOG_RETENTION_DAYS", "LOG_ROTATE_AGE_DAYS", "LOG_ROTATE_MAX_BYTES",
    "ENV_ALERT_URLS", "ALERT_CREDENTIAL_SERVICE", "ALERT_QUIET_PERIOD_MIN", "ALERT_ORDER_REJECTIONS",
    "ALERT_TOKEN_EXPIRY_HOURS",
    "TELEGRAM_CREDENTIAL_SERVICE", "TELEGRAM_API_URL", "TELEGRAM_POLL_TIMEOUT_S", "TELEGRAM_FLATTEN_CODE_MIN",
    "TELEGRAM_RESUME_MAX_AGE_MIN",
    "TELEGRAM_RETRY_PAUSE_S", "TELEGRAM_MESSAGE_LIMIT", "TELEGRAM_LOCK_FILE",
    "ENV_CSV_DIR", "CSV_DIR", "ENV_SETTING_PREFIX", "SETTINGS_FILE", "ENV_RAY_ADDRESS", "ENV_XDG_CONFIG_HOME", "ENV_PYTHON", "ENV_FAILPOINT",
    "REDDIT_COLLECT", "REDDIT_COLLECT_BEFORE_CLOSE_MIN", "REDDIT_COLLECT_CATCHUP_MIN", "REDDIT_TIMEOUT_S", "REDDIT_CREDENTIAL_SERVICE",
    "REDDIT_OAUTH_URL", "REDDIT_URL",
)

# ====================================== what each tunable may be (tunables.py checks it at every start)
# Every constant above is declared here once, in the table (topic) of settings.toml it is set in:
# NAME: (kind, unit, allowed). kind is "int", "float" (an int is accepted), "bool", "choice" (allowed:
# the values), "date" (YYYY-MM-DD), "str", "int_or_none", or "fixed": the program's structure, not
# settable from settings.toml or the environment (environment variable names, column names, and every
# file and folder: state, locks, logs and the audit trail move together with TRADING_HOME, never one
# by one, so a setting cannot point a run at an empty state database or another lock). allowed of a
# number is an interval, "[0, 1]" or "(0, inf)": a square bracket includes the bound, a round one
# excludes it. The values above (constants.py), settings.toml and TRADING_SET_<NAME> are all checked
# against it at every start (tunables.apply, called by logging_setup.setup_logging).
TUNABLE_SPECS: dict[str, dict[str, tuple]] = {
    "environment": {
        "ENV_TRADING_MODE": ("fixed", "environment variable name", None),
        "ENV_TRADING_HOME": ("fixed", "environment variable name", None),
        "ENV_DATA_SOURCE": ("fixed", "environment variable name", None),
        "ENV_CREDENTIAL_KEY": ("fixed", "environment variable name", None),
        "ENV_CREDENTIAL_KEY_NEW": ("fixed", "environment variable name", None),
        "ENV_CONFIG_DIR": ("fixed", "environment variable name", None),
        "ENV_TRADING_NOW": ("fixed", "environment variable name", None),
        "ENV_TRAIN_PROFILE": ("fixed", "environment variable name", None),
        "ENV_CRONTAB_FILE": ("fixed", "environment variable name", None),
        "ENV_ALERT_URLS": ("fixed", "environment variable name", None),
        "ENV_CSV_DIR": ("fixed", "environment variable name", None),
        "ENV_SETTING_PREFIX": ("fixed", "environment variable prefix", None),
        "ENV_RAY_ADDRESS": ("fixed", "environment variable name", None),
        "ENV_XDG_CONFIG_HOME": ("fixed", "environment variable name", None),
        "ENV_PYTHON": ("fixed", "environment variable name", None),
        "ENV_FAILPOINT": ("fixed", "environment variable name", None),
        "TRADING_MODES": ("fixed", "accepted TRADING_MODE values", None),
        "DEFAULT_TRADING_MODE": ("fixed", "TRADING_MODE when unset (always paper)", None),
        "DATA_SOURCES": ("fixed", "accepted DATA_SOURCE values", None),
        "DEFAULT_DATA_SOURCE": ("fixed", "DATA_SOURCE when unset (set DATA_SOURCE instead)", None),
        "APP_NAME": ("fixed", "key directory name", None),
    },
    "files": {
        "UNIVERSE_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "PROCESSED_DATA_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "RAW_PRICES_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "ACTIONS_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "REFUSED_SYMBOLS_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "CSV_ACTIONS_FILE": ("fixed", "file name in TRADING_CSV_DIR", None),
        "MODEL_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "MODEL_METADATA_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "MODEL_BACKUP_DIR": ("fixed", "folder under TRADING_HOME (move them all with TRADING_HOME)", None),
        "MODEL_QUARANTINE_DIR": ("fixed", "folder under TRADING_HOME (move them all with TRADING_HOME)", None),
        "MODEL_SHADOW_DIR": ("fixed", "folder under TRADING_HOME (move them all with TRADING_HOME)", None),
        "MODEL_CANDIDATE_DIR": ("fixed", "folder under TRADING_HOME (move them all with TRADING_HOME)", None),
        "STATE_DB_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "REPLAY_STATE_DB_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "LOG_DIR": ("fixed", "folder under TRADING_HOME (logs/: people grep it)", None),
        "AUDIT_LOG_FILE": ("fixed", "file under TRADING_HOME (the audit trail)", None),
        "TRIAL_REGISTRY_FILE": ("fixed", "file under TRADING_HOME (beside the audit trail)", None),
        "REPORTS_DIR": ("fixed", "folder under TRADING_HOME (move them all with TRADING_HOME)", None),
        "LOCK_DIR": ("fixed", "folder under TRADING_HOME (move them all with TRADING_HOME)", None),
        "SETTINGS_FILE": ("fixed", "file under TRADING_HOME", None),
        "HOME_STATE_FILES": ("fixed", "files whose presence makes a folder a home", None),
    },
    "logging": {
        "LOG_FORMAT": ("fixed", "logging format (people grep the lines)", None),
        "LOG_DATE_FORMAT": ("fixed", "strftime format", None),
        "ERRORS_LOG_NAME": ("fixed", "file name in logs/", None),
    },
    "data": {
        "HISTORY_START": ("date", "YYYY-MM-DD", None),
        "CSV_DIR": ("fixed", "folder under TRADING_HOME (move them all with TRADING_HOME)", None),
        "DOWNLOAD_DEADLINE_S": ("float", "seconds", "(0, 3600]"),
        "DOWNLOAD_TIMEOUT_S": ("float", "seconds", "(0, 600]"),
        "DOWNLOAD_RETRIES": ("int", "count", "[0, 20]"),
        "DOWNLOAD_BACKOFF_S": ("float", "seconds", "[0, 600]"),
        "INCREMENTAL_OVERLAP_DAYS": ("int", "days", "[0, 365]"),
        "STALE_AFTER_SESSIONS": ("int", "NYSE sessions", "[1, 252]"),
        "MAX_MISSING_SESSIONS_FRACTION": ("float", "fraction", "[0, 1]"),
        "SYNTHETIC_OPEN_MAX_SHARE": ("float", "fraction", "[0, 1]"),
        "MAX_DAILY_MOVE": ("float", "fraction", "(0, 10]"),
        "MAX_PRICE": ("float", "USD", "(0, inf)"),
        "FRESH_FILE_HOURS": ("float", "hours", "[0, 8760]"),
        "MIN_HISTORY_ROWS": ("int", "rows", "[1, 100000]"),
    },
    "features": {
        "PRICE_COLUMNS": ("fixed", "column names", None),
        "RAW_COLUMNS": ("fixed", "column names", None),
        "FEATURE_VOL_WINDOW": ("int", "sessions", "[2, 252]"),
        "FEATURE_RSI_WINDOW": ("int", "sessions", "[2, 252]"),
        "FEATURE_COLUMNS": ("fixed", "column names (build_features computes exactly these)", None),
    },
    "sample": {
        "SAMPLE_START": ("date", "YYYY-MM-DD", None),
        "SAMPLE_END": ("date", "YYYY-MM-DD", None),
        "SAMPLE_SEED": ("int", "seed", "[0, 4294967295]"),
        "SAMPLE_LABEL": ("fixed", "label shown with sample prices", None),
        "SAMPLE_AR_COEF": ("float", "AR(1) coefficient", "(-1, 1)"),
    },
    "model": {
        "WINDOW_LENGTH": ("int", "sessions", "[2, 500]"),
        "LSTM_LAYERS": ("int", "count", "[1, 8]"),
        "LSTM_UNITS": ("int", "units", "[1, 4096]"),
        "DENSE_UNITS": ("int", "units", "[1, 4096]"),
        "TARGET_VOL_FLOOR": ("float", "daily log-return std", "(0, 1)"),
        "TARGET_CLIP": ("float", "vol-scaled units", "(0, 1000]"),
        "FEATURE_CLIP": ("float", "standard deviations", "(0, 1000]"),
        "TRAIN_EPOCHS": ("int", "epochs", "[1, 10000]"),
        "TRAIN_BATCH_SIZE": ("int", "samples", "[1, 1000000]"),
        "TRAIN_LEARNING_RATE": ("float", "Adam learning rate", "(0, 1]"),
        "TRAIN_PATIENCE": ("int", "epochs", "[0, 10000]"),
        "TRAIN_SEED": ("int", "seed", "[0, 4294967295]"),
        "VALIDATION_FRACTION": ("float", "fraction of sessions", "(0, 1)"),
        "TEST_FRACTION": ("float", "fraction of sessions", "[0, 1)"),
        "MIN_SYMBOL_ROWS": ("int", "rows", "[1, 100000]"),
        "PROMOTION_TOLERANCE": ("float", "fraction", "[0, 10]"),
        "INFERENCE_PARITY_TOL": ("float", "scaled output", "(0, 1]"),
        "MODEL_BACKUPS_KEEP": ("int", "count", "[0, 1000]"),
        "PROMOTION_ALPHA": ("float", "significance level", "(0, 0.5]"),
        "SHADOW_MIN_SESSIONS": ("int", "sessions", "[3, 10000]"),
        "SHADOW_ALPHA": ("float", "significance level", "(0, 0.5]"),
    },
    "tiny_profile": {
        "TINY_WINDOW": ("int", "sessions", "[2, 500]"),
        "TINY_UNITS": ("int", "units", "[1, 4096]"),
        "TINY_DENSE_UNITS": ("int", "units", "[1, 4096]"),
        "TINY_EPOCHS": ("int", "epochs", "[1, 10000]"),
        "TINY_PATIENCE": ("int", "epochs", "[0, 10000]"),
    },
    "signals": {
        "SIGNAL_THRESHOLD": ("float", "score, unitless (default in 0.5-0.7)", "(0, 10]"),
        "MAX_ABS_SCORE": ("float", "score, unitless", "(0, 1000]"),
        "MAX_PRED_MOVE": ("float", "fraction of the close", "(0, 10]"),
        "DATA_MAX_AGE_SESSIONS": ("int", "sessions", "[0, 252]"),
    },
    "drift": {
        "DRIFT_MIN_SAMPLES": ("int", "count", "[1, 1000000]"),
        "DRIFT_LOOKBACK_DAYS": ("int", "calendar days", "[1, 3650]"),
        "DRIFT_LOW": ("float", "fraction", "(0, 10]"),
        "DRIFT_MEDIUM": ("float", "fraction", "(0, 10]"),
        "DRIFT_HIGH": ("float", "fraction", "(0, 10]"),
        "DRIFT_CRITICAL": ("float", "fraction", "(0, 10]"),
        "DRIFT_ALERT_LOG_DAYS": ("int", "count of logs", "[1, 365]"),
    },
    "risk": {
        "MAX_POSITION_PCT": ("float", "fraction of equity (0.10 = 10 %)", "(0, 1]"),
        "MAX_GROSS_EXPOSURE": ("float", "fraction of equity (1.0 = 100 %)", "(0, 4]"),
        "MAX_POSITIONS": ("int", "count", "[1, 10000]"),
        "MAX_ORDER_VALUE": ("float", "USD", "(0, inf)"),
        "PRICE_SANITY_PCT": ("float", "fraction (0.10 = 10 %)", "(0, 1]"),
        "RISK_PER_TRADE": ("float", "fraction of equity (0.01 = 1 %)", "(0, 1]"),
        "MAX_SIZE_SCALE": ("float", "multiple", "[1, 100]"),
        "REBALANCE_BAND": ("float", "fraction of the position", "[0, 1]"),
        "MAX_DRAWDOWN": ("float", "fraction of the peak equity (0.15 = 15 %)", "(0, 1)"),
        "DAILY_LOSS_LIMIT": ("float", "fraction of the day's start equity (0.05 = 5 %)", "(0, 1)"),
    },
    "shorts": {
        "ALLOW_SHORTS": ("bool", "true or false", None),
        "MAX_BORROW_RATE": ("float", "annual fraction (0.20 = 20 %)", "[0, 10]"),
        "REQUIRE_BORROW_DATA": ("bool", "true or false", None),
        "EX_DIVIDEND_WINDOW_DAYS": ("int", "days", "[0, 365]"),
        "FORCED_BUYIN_LIMIT": ("int", "count", "[1, 1000]"),
        "FORCED_BUYIN_LOOKBACK_DAYS": ("int", "days", "[1, 3650]"),
    },
    "execution": {
        "ORDER_RETRIES": ("int", "count", "[0, 20]"),
        "ORDER_BACKOFF_S": ("float", "seconds", "[0, 600]"),
        "RECONCILE_LOOKBACK_DAYS": ("int", "days", "[1, 59]"),
        "RECONCILE_CASH_TOLERANCE": ("float", "USD", "[0, 1000]"),
        "BROKER_RETRY_DEADLINE_S": ("float", "seconds", "[0, 3600]"),
        "ORDER_FILL_TIMEOUT_S": ("float", "seconds", "[0, 86400]"),
        "FLATTEN_LOCK_WAIT_S": ("float", "seconds", "[0, 86400]"),
        "ORDER_POLL_INTERVAL_S": ("float", "seconds", "(0, 3600]"),
        "ORDER_SNAPSHOT_LOOKBACK_S": ("float", "seconds", "(0, 5184000]"),
        "ORDER_ADOPT_MAX_DELAY_S": ("float", "seconds", "[0, 86400]"),
        "CLOCK_MAX_SKEW_S": ("float", "seconds", "[1, 5000000]"),
        "HALT_CANCELS_UNFILLED": ("bool", "true or false", None),
        "MAX_ORDERS_PER_MINUTE": ("int", "requests per minute", "[1, 100000]"),
        "CIRCUIT_BREAKER_FAILURES": ("int", "count", "[1, 1000]"),
        "CIRCUIT_BREAKER_RECOVERY_S": ("float", "seconds", "(0, 86400]"),
    },
    "costs": {
        "INITIAL_PAPER_CASH": ("float", "USD", "(0, inf)"),
        "PAPER_FILL": ("choice", "fill rule", ("next_open", "close")),
        "PAPER_OPENS_SESSIONS": ("int", "sessions", "[1, 2520]"),
        "PAPER_SLIPPAGE_BPS": ("float", "basis points", "[0, 10000]"),
        "PAPER_COMMISSION_PER_SHARE": ("float", "USD per share", "[0, 100]"),
        "PAPER_MIN_COMMISSION": ("float", "USD per order", "[0, 10000]"),
        "DEFAULT_BORROW_RATE": ("float", "annual fraction (0.005 = 0.5 %)", "[0, 10]"),
        "BORROW_DAY_COUNT": ("int", "days per year", "[360, 366]"),
        "PAPER_SHORT_MARGIN_REQ": ("float", "multiple of the short value (1.5 = 150 %)", "[1, 10]"),
        "PAPER_ACCOUNT_TYPE": ("choice", "account type", ("MARGIN", "CASH")),
    },
    "stops and collars": {
        "PROTECTIVE_STOPS": ("bool", "true or false", None),
        "STOP_VOL_MULTIPLE": ("float", "multiple of the daily volatility", "(0, 100]"),
        "STOP_VOL_WINDOW": ("int", "sessions", "[2, 252]"),
        "STOP_MIN_DISTANCE": ("float", "fraction of the reference price (0.02 = 2 %)", "[0, 0.9]"),
        "ORDER_TYPE": ("choice", "order type", ("limit_collar", "market")),
        "PRICE_COLLAR_BPS": ("float", "basis points", "(0, 5000]"),
        "PRICE_TICK": ("float", "USD", "(0, 1]"),
    },
    "schwab": {
        "BROKER_HTTP_TIMEOUT_S": ("float", "seconds", "(0, 600]"),
        "TOKEN_WARN_AGE_DAYS": ("float", "days", "(0, 7]"),
        "TOKEN_MAX_AGE_DAYS": ("float", "days", "(0, 7]"),
        "SCHWAB_CALLBACK_URL": ("str", "URL registered with the Schwab app", None),
        "SCHWAB_HTB_RATE_DIVISOR": ("float", "divisor", "(0, 10000]"),
        "SCHWAB_ORDER_LOOKBACK_DAYS": ("int", "days (API limit 60)", "[1, 59]"),
        "SCHWAB_ORDER_QUERY_AHEAD_S": ("float", "seconds", "[0, 604800]"),
        "SCHWAB_QUOTE_BATCH": ("int", "symbols per request", "[1, 500]"),
    },
    "backtest": {
        "BACKTEST_FILL": ("choice", "fill rule", ("next_open", "close")),
        "BACKTEST_CASH_INTEREST": ("bool", "true or false", None),
        "BACKTEST_MAX_DAY_SPAN": ("int", "calendar days", "[1, 10000000]"),
        "TRADING_DAYS_PER_YEAR": ("int", "sessions per year", "[1, 366]"),
        "RISK_FREE_RATE": ("float", "annual fraction (0.02 = 2 %)", "[-0.1, 1]"),
        "GOLIVE_MIN_TOTAL_RETURN": ("float", "fraction", "[-1, 100]"),
        "GOLIVE_MIN_SHARPE": ("float", "annualised Sharpe", "[-10, 10]"),
        "GOLIVE_MAX_DRAWDOWN": ("float", "fraction (0.20 = 20 %)", "(0, 1]"),
        "GOLIVE_MIN_TRADES": ("int", "round trips", "[0, 1000000]"),
        "GOLIVE_MIN_PAPER_SESSIONS": ("int", "sessions", "[0, 10000]"),
        "GOLIVE_WALK_FORWARD_MAX_AGE_DAYS": ("int", "calendar days", "[1, 3650]"),
    },
    "audit": {
        "AUDIT_KEY_FILE": ("fixed", "file name in the key directory", None),
        "AUDIT_CHECKPOINT_FILE": ("fixed", "file name in the key directory", None),
        "AUDIT_LOCK_FILE": ("fixed", "file name in logs/audit/", None),
        "AUDIT_TRAIL_ID_FILE": ("fixed", "file name in logs/audit/", None),
        "AUDIT_TRAIL_ID_BYTES": ("fixed", "bytes", None),
        "AUDIT_CHECKPOINT_FSYNC": ("bool", "true or false", None),
    },
    "credentials": {
        "CREDENTIAL_KEY_FILE": ("fixed", "file name in the key directory", None),
        "CREDENTIAL_NEXT_KEY_FILE": ("fixed", "file name in the key directory", None),
        "CREDENTIAL_FILE_TEMPLATE": ("fixed", "file name under TRADING_HOME", None),
    },
    "reports": {
        "STATUS_PAGE_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "STATUS_RECENT_ORDERS": ("int", "count", "[0, 10000]"),
        "STATUS_RECENT_AUDIT": ("int", "count", "[0, 10000]"),
        "STATUS_RECENT_TRIPS": ("int", "count", "[0, 10000]"),
        "STATUS_SERVE_HOST": ("fixed", "address (127.0.0.1 only: the page is not public)", None),
        "STATUS_SERVE_PORT": ("int", "TCP port", "[1, 65535]"),
        "REPORT_SHORT_PERIOD_SESSIONS": ("int", "sessions", "[1, 100000]"),
        "REPORT_MIN_TRADES_NOTE": ("int", "count", "[0, 1000000]"),
        "REPORT_MAX_TRIPS_SHOWN": ("int", "count", "[0, 1000000]"),
    },
    "schedule": {
        "SCHEDULER_LOCK_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
        "SCHEDULE_INTERVAL_MIN": ("int", "minutes", "[1, 60]"),
        "HEALTH_CHECK_BEFORE_OPEN_MIN": ("int", "minutes", "[0, 570]"),
        "CYCLE_AFTER_OPEN_MIN": ("int", "minutes", "[0, 390]"),
        "DATA_UPDATE_AFTER_CLOSE_MIN": ("int", "minutes", "[0, 600]"),
        "AUDIT_ROTATE_AFTER_CLOSE_MIN": ("int", "minutes", "[0, 600]"),
        "LOG_RETENTION_AFTER_CLOSE_MIN": ("int", "minutes", "[0, 600]"),
        "RETRAIN_AFTER_CLOSE_MIN": ("int", "minutes", "[0, 2880]"),
        "WALK_FORWARD_AFTER_CLOSE_MIN": ("int", "minutes", "[0, 2880]"),
        "HEALTH_CHECK_CATCHUP_MIN": ("int", "minutes", "[1, 1440]"),
        "CYCLE_CATCHUP_MIN": ("int", "minutes", "[1, 1440]"),
        "CYCLE_RERUNS": ("int", "count", "[0, 20]"),
        "CYCLE_RERUN_SPACING_MIN": ("int", "minutes", "[1, 1440]"),
        "AFTER_CLOSE_CATCHUP_MIN": ("int", "minutes", "[1, 1440]"),
        "WEEKLY_CATCHUP_MIN": ("int", "minutes", "[1, 10080]"),
        "SCHEDULE_MISSED_LOOKBACK_DAYS": ("int", "days", "[0, 365]"),
        "JOB_TIMEOUT_MIN": ("int", "minutes", "[1, 1440]"),
        "LONG_JOB_TIMEOUT_MIN": ("int", "minutes", "[1, 10080]"),
        "CRON_MARKER": ("fixed", "crontab comment text", None),
    },
    "log_retention": {
        "LOG_RETENTION_DAYS": ("int", "days", "[1, 36500]"),
        "LOG_ROTATE_AGE_DAYS": ("int", "days", "[1, 3650]"),
        "LOG_ROTATE_MAX_BYTES": ("int", "bytes", "[1024, 1000000000000]"),
    },
    "alerts": {
        "ALERT_CREDENTIAL_SERVICE": ("fixed", "credential service name", None),
        "ALERT_QUIET_PERIOD_MIN": ("int", "minutes", "[0, 100000]"),
        "ALERT_ORDER_REJECTIONS": ("int", "count", "[1, 1000]"),
        "ALERT_TOKEN_EXPIRY_HOURS": ("int", "hours", "[0, 168]"),
    },
    "telegram": {
        "TELEGRAM_CREDENTIAL_SERVICE": ("fixed", "credential service name", None),
        "TELEGRAM_API_URL": ("str", "URL (https://api.telegram.org, or a local fake)", None),
        "TELEGRAM_POLL_TIMEOUT_S": ("int", "seconds", "[0, 50]"),
        "TELEGRAM_FLATTEN_CODE_MIN": ("int", "minutes", "[1, 60]"),
        "TELEGRAM_RESUME_MAX_AGE_MIN": ("int", "minutes", "[1, 1440]"),
        "TELEGRAM_RETRY_PAUSE_S": ("int", "seconds", "[1, 3600]"),
        "TELEGRAM_MESSAGE_LIMIT": ("fixed", "characters (Telegram's limit)", None),
        "TELEGRAM_LOCK_FILE": ("fixed", "file under TRADING_HOME (move them all with TRADING_HOME)", None),
    },
    "evidence": {
        "WALK_FORWARD_MIN_TRAIN_SESSIONS": ("int", "sessions", "[20, 100000]"),
        "WALK_FORWARD_RETRAIN_SESSIONS": ("int", "sessions", "[1, 100000]"),
        "SKILL_ALPHA": ("float", "significance level", "(0, 0.5]"),
        "SKILL_MIN_DSR": ("float", "probability", "[0, 1]"),
        "SKILL_HAC_LAG": ("int_or_none", "sessions (None: automatic)", "[0, 10000]"),
        "HOLDOUT_SESSIONS": ("int", "sessions (0: no holdout)", "[0, 100000]"),
        "PBO_MAX": ("float", "probability", "[0, 1]"),
        "PBO_MIN_TRIALS": ("int", "trials", "[2, 100000]"),
        "PBO_BLOCKS": ("int", "blocks (even)", "[2, 20]"),
        "SWEEP_GRID": ("str", "key=v1,v2;key=v1,v2 (retrain, window, threshold, profile)", None),
    },
    "sentiment": {
        "REDDIT_SENTIMENT": ("bool", "on/off", None),
        "SENTIMENT_COLUMNS": ("fixed", "column names (sentiment_store.sentiment_features computes exactly these)", None),
        "REDDIT_SUBREDDITS": ("str", "subreddit names separated by spaces", None),
        "REDDIT_POSTS_PER_SUBREDDIT": ("int", "items", "[0, 1000]"),
        "REDDIT_COMMENTS_PER_SUBREDDIT": ("int", "items", "[0, 1000]"),
        "REDDIT_LOOKBACK_HOURS": ("float", "hours", "(0, 168]"),
        "REDDIT_TICKER_BLACKLIST": ("str", "upper-case words separated by spaces", None),
        "REDDIT_VADER_THRESHOLD": ("float", "VADER compound score", "[0, 1)"),
        "REDDIT_MENTION_Z_WINDOW": ("int", "collections", "[2, 1000]"),
        "REDDIT_MENTION_Z_MIN": ("int", "collections", "[2, 1000]"),
        "REDDIT_COLLECT": ("bool", "on/off", None),
        "REDDIT_COLLECT_BEFORE_CLOSE_MIN": ("int", "minutes", "[1, 390]"),
        "REDDIT_COLLECT_CATCHUP_MIN": ("int", "minutes", "[0, 389]"),
        "REDDIT_TIMEOUT_S": ("float", "seconds", "(0, 600]"),
        "REDDIT_CREDENTIAL_SERVICE": ("fixed", "credential service name", None),
        "REDDIT_OAUTH_URL": ("str", "URL (https://oauth.reddit.com, or a local fake)", None),
        "REDDIT_URL": ("str", "URL (https://www.reddit.com, or a local fake)", None),
    },
}
